"""The table schema: one hand-editable YAML file, validated on load.

A schema names each column's type, whether it may be null, its observed range or category
set, its disguised-null rules (pinned tokens, detectors switched off) and whether lakefill
imputes it. ``infer_schema`` writes one from a sample; users edit it and pass it back.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lakefill._arrow import as_text
from lakefill.errors import SchemaError
from lakefill._values import (
    is_blank,
    is_null_token,
    normalize_text,
    parse_bool,
    parse_datetime_array,
    parse_number_array,
)

__all__ = [
    "ColumnType",
    "ColumnSchema",
    "TableSchema",
    "Range",
    "Expectation",
    "infer_schema",
    "load_schema",
    "dump_schema",
    "IMPUTABLE_TYPES",
    "ARROW_TYPES",
    "arrow_type",
]

ColumnType = Literal["numeric", "integer", "decimal", "boolean", "categorical", "datetime", "text", "id", "passthrough"]
# the Arrow type of each column type once typed ("passthrough" columns keep the type they were read with)
ARROW_TYPES = {
    "numeric": pa.float64(),
    "integer": pa.int64(),
    "boolean": pa.bool_(),
    "categorical": pa.string(),
    "datetime": pa.timestamp("us", tz="UTC"),
    "text": pa.string(),
    "id": pa.string(),
}



def arrow_type(col: "ColumnSchema") -> pa.DataType:
    """The Arrow type of a typed column (a decimal column's carries its precision and scale)."""
    if col.type == "decimal":
        return pa.decimal128(col.precision, col.scale)
    return ARROW_TYPES[col.type]


IMPUTABLE_TYPES = frozenset({"numeric", "integer", "decimal", "boolean", "categorical", "datetime"})
MAX_FLOAT_DIGITS = 15  # a number with more significant digits than this does not survive a float64: decimal
DETECTORS = ("token", "non_numeric", "sentinel", "co_missing", "structural", "syntactic", "random")
MAX_CATEGORIES = 200


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"range min {self.min} is greater than max {self.max}")
        return self


class Expectation(_Strict):
    """A user-added Great Expectations expectation, e.g. ``expect_column_values_to_match_regex``."""

    type: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ColumnSchema(_Strict):
    name: str
    type: ColumnType
    nullable: bool = True
    impute: bool = False
    unique: bool = False
    range: Range | None = None
    categories: list[str] | None = None
    categories_truncated: bool = False
    null_values: list[str] = Field(default_factory=list)
    not_null_values: list[str] = Field(default_factory=list)
    detectors: dict[str, bool] = Field(default_factory=lambda: {d: True for d in DETECTORS})
    # what happens to a cell found to be "not applicable" (detector ``structural``): ``null``
    # (default) makes it null and never imputes it; ``keep`` keeps the original value; both list
    # it in the row's ``_lf_not_applicable``. ``impute`` treats it as an unknown value.
    not_applicable: Literal["null", "keep", "impute"] = "null"
    # the share of the column's written cells that a run may impute before ``lakefill report
    # --check`` fails the run (a tool must not silently invent most of a column); raise it for a
    # column you know is mostly missing
    max_imputed_share: float = Field(default=0.5, ge=0.0, le=1.0)
    # the distance of a run's observed cells to the model's training rows over which the column
    # counts as drifted (Jensen-Shannon for numbers, L-infinity for categories; lakefill._drift):
    # None takes the default (0.1 and 0.2); ``lakefill report --check`` fails a drifted run
    drift_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    # categories, sets and the model compare cells after ``normalize_text`` (trimmed, NFC); true
    # also writes the normalised text to the output (by default a cell stays as the file had it)
    normalize: bool = False
    # decimal columns only: kept exact (decimal128(precision, scale)) from the file to the table;
    # the model imputes in float and writes its fill back rounded to the scale
    precision: int | None = Field(default=None, ge=1, le=38)
    scale: int | None = Field(default=None, ge=0, le=38)
    expectations: list[Expectation] = Field(default_factory=list)

    @field_validator("detectors")
    @classmethod
    def _known_detectors(cls, value: dict[str, bool]) -> dict[str, bool]:
        unknown = sorted(set(value) - set(DETECTORS))
        if unknown:
            raise ValueError(f"unknown detector(s) {unknown}; known detectors are {list(DETECTORS)}")
        return {d: value.get(d, True) for d in DETECTORS}

    @model_validator(mode="after")
    def _consistent(self) -> "ColumnSchema":
        if self.impute and self.type not in IMPUTABLE_TYPES:
            raise ValueError(
                f"column {self.name!r} has type {self.type!r}, which lakefill never imputes; "
                f"set impute: false or change the type to one of {sorted(IMPUTABLE_TYPES)}"
            )
        if self.type == "categorical" and self.impute and not self.categories:
            raise ValueError(f"categorical column {self.name!r} is imputed but lists no categories")
        if self.type == "decimal":
            if self.precision is None or self.scale is None or self.scale > self.precision:
                raise ValueError(f"decimal column {self.name!r} needs precision (1-38) and scale (0-precision), "
                                 f"got precision {self.precision}, scale {self.scale}")
        elif self.precision is not None or self.scale is not None:
            raise ValueError(f"column {self.name!r} is {self.type!r}: precision and scale are for decimal columns")
        return self

    def detector_on(self, name: str) -> bool:
        return self.detectors.get(name, True)


class TableSchema(_Strict):
    version: Literal[1] = 1
    name: str = "table"
    columns: list[ColumnSchema]
    expectations: list[Expectation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> "TableSchema":
        seen: set[str] = set()
        dupes = sorted({c.name for c in self.columns if c.name in seen or seen.add(c.name)})
        if dupes:
            raise ValueError(f"duplicate column names in schema: {dupes}")
        if not self.columns:
            raise ValueError("a schema needs at least one column")
        return self

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSchema:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def imputed(self) -> list[ColumnSchema]:
        return [c for c in self.columns if c.impute]

    def check_columns(self, present: list[str], *, source: str) -> None:
        """Raise a SchemaError naming every schema column that ``source`` lacks."""
        missing = [n for n in self.names if n not in present]
        if missing:
            raise SchemaError(
                f"{source}: the schema names column(s) {missing} that the data does not have "
                f"(the data has {present}); fix the schema or the input"
            )


def read_yaml_mapping(path, *, error: type[Exception], what: str) -> dict:
    """Read a YAML file that must hold a mapping; every failure is an ``error`` naming the file.
    ``path``: a ``Path``, or a ``Location`` (read from its store directly)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise error(f"{what} not found: {path}") from err
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping, got {type(raw).__name__}")
    return raw


def load_schema(path) -> TableSchema:
    """A schema file: a path, or a ``lakefill.transforms.storage.Location`` on an object store."""
    path = Path(path) if isinstance(path, str) else path
    raw = read_yaml_mapping(path, error=SchemaError, what="schema file")
    try:
        return TableSchema.model_validate(raw)
    except ValidationError as err:
        raise SchemaError(f"{path}: invalid schema:\n{_format_errors(err, raw)}") from err


def _format_errors(err: ValidationError, raw: dict) -> str:
    lines = []
    for e in err.errors():
        loc = list(e["loc"])
        where = ".".join(str(p) for p in loc)
        if len(loc) >= 2 and loc[0] == "columns" and isinstance(loc[1], int):
            try:
                where = f"column {raw['columns'][loc[1]].get('name')!r}: " + ".".join(str(p) for p in loc[2:])
            except (IndexError, AttributeError, KeyError):
                pass
        lines.append(f"  - {where}: {e['msg']}")
    return "\n".join(lines)


def dump_schema(schema: TableSchema) -> str:
    data = schema.model_dump(mode="json", exclude_defaults=False)
    for col in data["columns"]:
        for key in ("range", "categories"):
            if col[key] is None:
                del col[key]
        for key in ("null_values", "not_null_values", "expectations"):
            if not col[key]:
                del col[key]
        if not col["categories_truncated"]:
            del col["categories_truncated"]
        if all(col["detectors"].values()):
            del col["detectors"]
        if not col["unique"]:
            del col["unique"]
        for key, default in (("not_applicable", "null"), ("max_imputed_share", 0.5), ("drift_threshold", None),
                             ("normalize", False),
                             ("precision", None), ("scale", None)):
            if col[key] == default:
                del col[key]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------

def infer_schema(table: pa.Table, *, name: str = "table", policy=None, max_categories: int = MAX_CATEGORIES) -> TableSchema:
    """Infer a schema from a raw (all-string) table, after the disguised nulls of ``policy``.

    Columns are typed by what their non-null values parse as; a column whose every value is
    null becomes ``text`` with ``impute: false`` (nothing to learn from).
    """
    table = as_text(table)  # a Parquet number column is inferred from its text, as a CSV's
    columns = []
    for col_name in table.column_names:
        if col_name.startswith("_lf_"):
            continue
        values = table.column(col_name)
        if not pa.types.is_string(values.type):  # a list, struct, map or binary column: kept as it is
            columns.append(ColumnSchema(name=col_name, type="passthrough", nullable=True, impute=False,
                                        detectors={d: False for d in DETECTORS}))
            continue
        nulls = policy.null_mask(col_name, values) if policy is not None else _blank_mask(values)
        observed = pc.filter(values, pc.invert(nulls))
        columns.append(_infer_column(col_name, observed, n_rows=len(values), has_null=bool(pc.any(nulls).as_py()),
                                     policy=policy, max_categories=max_categories,
                                     source_decimal=_source_decimal(table.schema.field(col_name))))
    return TableSchema(name=name, columns=columns)


def _blank_mask(values: pa.ChunkedArray) -> pa.ChunkedArray:
    return pa.chunked_array([pa.array([v is None or is_blank(v) or is_null_token(v) for v in values.to_pylist()], pa.bool_())])


def _source_decimal(field: pa.Field) -> tuple[int, int] | None:
    """(precision, scale) of a column the reader cast from a decimal type (its field metadata)."""
    source = (field.metadata or {}).get(b"lakefill.source_type", b"").decode()
    if source.startswith("decimal"):
        digits = [int(x) for x in source[source.index("(") + 1:source.index(")")].split(",")]
        return digits[0], digits[1]
    return None


def _decimal_shape(strings: list[str]) -> tuple[int, int]:
    """(digits before the point, digits after it), the most of each, over plain decimal strings."""
    whole = frac = 0
    for s in strings:
        body = s.lstrip("+-").replace(",", "")
        if "e" in body.lower():
            return 0, 0
        head, _, tail = body.partition(".")
        whole, frac = max(whole, len(head.lstrip("0"))), max(frac, len(tail))
    return whole, frac


def _infer_column(name: str, observed: pa.ChunkedArray, *, n_rows: int, has_null: bool, policy, max_categories: int,
                  source_decimal: tuple[int, int] | None = None) -> ColumnSchema:
    rules = policy.rules_for(name) if policy is not None else {}
    n = len(observed)
    if n == 0:
        return ColumnSchema(name=name, type="text", nullable=True, impute=False, **rules)
    strings = [normalize_text(s) for s in observed.to_pylist()]
    distinct = set(strings)
    numbers, bad = parse_number_array(strings)
    if bad == 0:
        finite = [x for x in numbers if not math.isnan(x)]
        is_int = all(float(x).is_integer() for x in finite) and all("." not in s for s in strings)
        if is_int and len(distinct) == n and n >= 20 and _looks_like_sequence(finite):
            return ColumnSchema(name=name, type="id", nullable=has_null, unique=True, **rules)
        if is_int and distinct <= {"0", "1"} and len(distinct) == 2:
            return ColumnSchema(name=name, type="boolean", nullable=has_null, impute=True, **rules)
        whole, frac = _decimal_shape(strings)
        if source_decimal is not None or (whole + frac > MAX_FLOAT_DIGITS and whole + frac <= 38):
            # a decimal in the file, or more digits than a float keeps: exact, as decimal(precision, scale);
            # the range is widened to the next floats out, so that its edges hold the exact values
            precision, scale = source_decimal or (whole + frac, frac)
            rng = Range(min=math.nextafter(min(finite), -math.inf), max=math.nextafter(max(finite), math.inf))
            return ColumnSchema(name=name, type="decimal", precision=precision, scale=scale, nullable=has_null,
                                impute=True, range=rng, **rules)
        rng = Range(min=min(finite), max=max(finite))
        return ColumnSchema(name=name, type="integer" if is_int else "numeric", nullable=has_null, impute=True, range=rng, **rules)
    if all(parse_bool(s) is not None for s in distinct) and len(distinct) <= 4:
        return ColumnSchema(name=name, type="boolean", nullable=has_null, impute=True, **rules)
    dates, bad_dates = parse_datetime_array(strings)
    if bad_dates == 0 and len(distinct) > 1:
        return ColumnSchema(name=name, type="datetime", nullable=has_null, impute=True,
                            range=Range(min=min(dates), max=max(dates)), **rules)
    if len(distinct) == n and n >= 20:
        return ColumnSchema(name=name, type="id", nullable=has_null, unique=True, **rules)
    if len(distinct) <= max_categories and len(distinct) <= max(2, 0.5 * n):
        return ColumnSchema(name=name, type="categorical", nullable=has_null, impute=True,
                            categories=sorted(distinct), **rules)
    if len(distinct) > max_categories and len(distinct) <= 0.05 * n:
        top = _top_values(strings, max_categories)
        return ColumnSchema(name=name, type="categorical", nullable=has_null, impute=True,
                            categories=top, categories_truncated=True, **rules)
    return ColumnSchema(name=name, type="text", nullable=has_null, impute=False, **rules)


def _looks_like_sequence(values: list[float]) -> bool:
    """Distinct integers that nearly fill their range (1, 2, 3 ...) look like a row id."""
    lo, hi = min(values), max(values)
    return hi - lo + 1 <= 1.5 * len(values)


def _top_values(strings: list[str], k: int) -> list[str]:
    counts: dict[str, int] = {}
    for s in strings:
        counts[s] = counts.get(s, 0) + 1
    return sorted(sorted(counts, key=lambda s: (-counts[s], s))[:k])
