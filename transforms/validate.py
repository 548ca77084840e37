"""Validation with Great Expectations 1.x: a suite built from the schema, run on every batch.

Row-level failures (map expectations: ranges, allowed sets, uniqueness, not-null) come back as
quarantine records naming the expectation and the column; a failed table-level expectation
(row count, column mean ...) raises ``ValidationFailed`` for the whole run.

A cell that detection found to be "not applicable" (listed in the row's ``_lf_not_applicable``)
is no missing value and no out-of-range one: the schema's range, set and not-null expectations
check the applicable cells only (a GX ``row_condition`` on a helper flag per column,
``not_applicable_<j>_<name>``, computed from that list for each batch).

GX's suite is the definition (and the source of the Data Docs). A suite made only of the four
row-level expectations the schema emits (between, in set, unique, not null; with their row
condition) is evaluated per batch with Arrow compute kernels (``compile_suite``), giving the
rows, reasons, order and counts GX gives (a test compares the two row for row on generated
batches with every bad input); a suite with any other expectation (a user's regex, a
table-level check) runs in GX, as does a batch whose column type the kernels do not take.
``Validator(..., engine="gx")`` always runs GX.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakefill._arrow import lists_to_flags, normalize_array
from lakefill.errors import SchemaError, ValidationFailed
from lakefill.transforms.detect import NOT_APPLICABLE
from lakefill.transforms.io import ROW_ID, Quarantined
from lakefill.schema import Expectation, TableSchema

__all__ = ["Validator", "ValidationSummary", "build_suite", "compile_suite"]

Stage = Literal["pre", "post"]
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


def _gx():
    import great_expectations as gx  # heavy import: only when a validator is built

    for name in ["great_expectations", *logging.root.manager.loggerDict]:  # GX's modules log INFO lines
        if name.startswith("great_expectations"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return gx


def _camel(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("_"))


def _user_expectation(gx, exp: Expectation, column: str | None):
    cls = getattr(gx.expectations, _camel(exp.type), None)
    if cls is None:
        raise SchemaError(f"unknown expectation type {exp.type!r}"
                          + (f" on column {column!r}" if column else "")
                          + "; use a Great Expectations core expectation name such as 'expect_column_values_to_match_regex'")
    kwargs = dict(exp.kwargs)
    if column is not None:
        kwargs.setdefault("column", column)
    try:
        return cls(**kwargs)
    except Exception as err:  # pydantic errors from GX: re-raise with the column named
        raise SchemaError(f"invalid arguments {exp.kwargs} for {exp.type}"
                          + (f" on column {column!r}" if column else "") + f": {err}") from err


def build_suite(schema: TableSchema, *, stage: Stage = "pre"):
    """The GX ExpectationSuite for ``schema``: pre-imputation or post-imputation."""
    gx = _gx()
    E = gx.expectations
    suite = gx.ExpectationSuite(name=f"lakefill_{schema.name}_{stage}")
    for j, col in enumerate(schema.columns):
        applicable = {"row_condition": f"`{_na_flag(j, col.name)}` == False", "condition_parser": "pandas"}
        if col.range is not None and col.type in ("numeric", "integer"):
            suite.add_expectation(E.ExpectColumnValuesToBeBetween(column=col.name, min_value=col.range.min, max_value=col.range.max,
                                                                  **applicable))
        if col.type == "categorical" and col.categories and not col.categories_truncated:
            suite.add_expectation(E.ExpectColumnValuesToBeInSet(column=col.name, value_set=list(col.categories), **applicable))
        if col.unique:
            suite.add_expectation(E.ExpectColumnValuesToBeUnique(column=col.name))
        must_have_value = (not col.nullable and not col.impute) if stage == "pre" else (col.impute or not col.nullable)
        if must_have_value:
            suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column=col.name, **applicable))
        for exp in col.expectations:
            suite.add_expectation(_user_expectation(gx, exp, col.name))
    for exp in schema.expectations:
        suite.add_expectation(_user_expectation(gx, exp, None))
    return suite


def _na_flag(j: int, name: str) -> str:
    """The helper column GX reads for "cell j is not applicable" (shown in the Data Docs)."""
    return f"not_applicable_{j}_{re.sub(r'[^A-Za-z0-9_]', '_', name)[:40]}"


def _frame(schema: TableSchema, table: pa.Table, names: list[str]):
    """The pandas frame GX validates: ``names`` plus one 'not applicable' flag per schema column."""
    categorical = {c.name for c in schema.columns if c.type == "categorical"}
    view = table.select(names)
    for i, name in enumerate(view.column_names):  # sets compare the cells' normalised text
        if name in categorical and pa.types.is_string(view.schema.field(i).type):
            view = view.set_column(i, name, normalize_array(view.column(i)))
    frame = view.to_pandas(types_mapper=None, timestamp_as_object=False)
    flags = (lists_to_flags(table.column(NOT_APPLICABLE), schema.names) if NOT_APPLICABLE in table.column_names
             else np.zeros((table.num_rows, len(schema.names)), dtype=bool))
    for j, name in enumerate(schema.names):
        frame[_na_flag(j, name)] = flags[:, j]
    return frame


@dataclass
class ValidationSummary:
    """Counts across the batches a validator has seen, for the run report."""

    batches: int = 0
    rows: int = 0
    rows_failed: int = 0
    by_expectation: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"batches": self.batches, "rows": self.rows, "rows_failed": self.rows_failed,
                "failures_by_expectation": dict(sorted(self.by_expectation.items()))}


# -- the suite's row-level expectations, evaluated with Arrow compute kernels ---------------------

COMPILED = ("expect_column_values_to_be_between", "expect_column_values_to_be_in_set",
            "expect_column_values_to_be_unique", "expect_column_values_to_not_be_null")
_CONDITION = re.compile(r"^`([^`]+)` == False$")
_DEFAULTS = {"mostly": 1.0, "strict_min": False, "strict_max": False, "condition_parser": "pandas", "meta": None,
             "notes": None, "description": None, "id": None, "rendered_content": None, "windows": None,
             "batch_id": None, "result_format": None, "include_config": True, "catch_exceptions": True}


@dataclass
class _Check:
    type: str
    column: str
    label: str
    flag: int | None  # the schema column whose "not applicable" flag excludes a row (the row_condition)
    min: float | None = None
    max: float | None = None
    values: list | None = None


def compile_suite(schema: TableSchema, suite) -> list[_Check] | None:
    """The suite's expectations as checks on Arrow batches, when every one of them is a
    row-level expectation of the four kinds the schema emits (between, in set, unique, not null)
    with no setting the evaluation does not take (``mostly``, strict bounds, another row
    condition); None otherwise (the suite then runs in GX). GX's suite stays the definition:
    the checks are read from its expectation configurations."""
    flags = {_na_flag(j, name): j for j, name in enumerate(schema.names)}
    checks = []
    for exp in suite.expectations:
        cfg = exp.configuration
        kw = {k: v for k, v in cfg.kwargs.items() if v is not None}
        if cfg.type not in COMPILED or "column" not in kw:
            return None
        column, condition = kw.pop("column"), kw.pop("row_condition", None)
        flag = None
        if isinstance(condition, dict) and condition.get("type") == "pass_through":  # GX's stored form
            condition = condition.get("pass_through_filter")
        if condition is not None:
            m = _CONDITION.match(condition) if isinstance(condition, str) else None
            if m is None or m.group(1) not in flags:
                return None
            flag = flags[m.group(1)]
        bounds = {k: kw.pop(k, None) for k in ("min_value", "max_value")}
        values = kw.pop("value_set", None)
        if any(_DEFAULTS.get(k, object()) != v for k, v in kw.items()):
            return None
        checks.append(_Check(cfg.type, column, f"{cfg.type}({column})", flag, bounds["min_value"],
                             bounds["max_value"], None if values is None else list(values)))
    return checks


def _nulls(col: pa.ChunkedArray) -> np.ndarray:
    """Null cells as pandas sees them (a float NaN is null there)."""
    missing = col.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_floating(col.type):
        missing |= pc.is_nan(col).fill_null(False).to_numpy(zero_copy_only=False)
    return missing


def _unexpected(check: _Check, col: pa.ChunkedArray, applicable: np.ndarray) -> np.ndarray:
    """The rows a check flags (GX's map expectations: null cells are never unexpected but for
    not-null; rows outside the row condition are not evaluated)."""
    missing = _nulls(col)
    if check.type == "expect_column_values_to_not_be_null":
        return missing & applicable
    if check.type == "expect_column_values_to_be_between":
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            raise _NotCompiled(col.type)
        values = col.to_numpy(zero_copy_only=False).astype(float)
        out = np.zeros(len(col), dtype=bool)
        with np.errstate(invalid="ignore"):
            if check.min is not None:
                out |= values < check.min
            if check.max is not None:
                out |= values > check.max
        return out & ~missing & applicable
    if check.type == "expect_column_values_to_be_in_set":
        if not pa.types.is_string(col.type) or not all(isinstance(v, str) for v in check.values):
            raise _NotCompiled(col.type)
        inside = pc.is_in(col, value_set=pa.array(check.values, pa.string())).fill_null(True)
        return ~inside.to_numpy(zero_copy_only=False) & ~missing & applicable
    # unique: every occurrence of a value seen more than once (pandas' duplicated(keep=False))
    if not (pa.types.is_integer(col.type) or pa.types.is_string(col.type)):
        raise _NotCompiled(col.type)
    present, flat = ~missing, col.combine_chunks()
    values = pc.unique(flat)
    index = pc.index_in(flat, value_set=values).fill_null(0).to_numpy(zero_copy_only=False)
    counts = np.bincount(index[present], minlength=len(values))
    return present & (counts[index] > 1)


class _NotCompiled(Exception):
    """A column type the Arrow evaluation does not take: the batch goes to GX."""


class Validator:
    """Runs a schema's suite on Arrow batches. Built once; ``validate`` is called per batch."""

    def __init__(self, schema: TableSchema, *, stage: Stage = "pre", engine: Literal["arrow", "gx"] = "arrow"):
        self.schema = schema
        self.stage = stage
        gx = _gx()
        self._context = gx.get_context(mode="ephemeral")
        try:
            self._context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
        except AttributeError:
            pass
        source = self._context.data_sources.add_pandas(f"lakefill_{stage}")
        self._batch_definition = source.add_dataframe_asset("batch").add_batch_definition_whole_dataframe("whole")
        self.suite = self._context.suites.add(build_suite(schema, stage=stage))
        # the suite evaluated with Arrow kernels where it can be (tests compare it with GX's result
        # row for row); otherwise, and with engine: gx, in GX itself
        self.checks = compile_suite(schema, self.suite) if engine == "arrow" else None
        self.engine_used: Counter = Counter()  # batches per evaluation (arrow / gx)
        self.summary = ValidationSummary()
        self.last_results = None
        self.last_failures: Counter = Counter()  # the last batch's failing rows per expectation

    def validate(self, table: pa.Table) -> tuple[pa.Table, list[Quarantined]]:
        """Returns the rows that pass and the quarantine records of those that do not."""
        self.last_failures = Counter()
        if table.num_rows == 0:
            return table, []
        if ROW_ID not in table.column_names:
            raise ValueError(f"the batch needs a {ROW_ID!r} column to name failing rows")
        names = [n for n in table.column_names if n == ROW_ID or not n.startswith("_lf_")]
        reasons = None
        if self.checks is not None:
            try:
                reasons = self._arrow_reasons(table, names)
                self.engine_used["arrow"] += 1
            except _NotCompiled:
                reasons = None
        if reasons is None:
            reasons = self._gx_reasons(table, names)
            self.engine_used["gx"] += 1
        self.summary.batches += 1
        self.summary.rows += table.num_rows
        self.summary.rows_failed += len(reasons)
        if not reasons:
            return table, []
        row_ids = table.column(ROW_ID).to_numpy()
        bad = np.isin(row_ids, np.fromiter(reasons, dtype=np.int64))
        originals = table.filter(pa.array(bad)).select([n for n in table.column_names if not n.startswith("_lf_")])
        quarantined = [Quarantined(int(rid), "; ".join(reasons[int(rid)]), f"validate-{self.stage}", json.dumps(rec, default=str))
                       for rid, rec in zip(row_ids[bad], originals.to_pylist())]
        return table.filter(pa.array(~bad)), quarantined

    def _arrow_reasons(self, table: pa.Table, names: list[str]) -> dict[int, list[str]]:
        """The compiled checks on the batch: the same reasons, per row and in the same order, as GX."""
        categorical = {c.name for c in self.schema.columns if c.type == "categorical"}
        flags = (lists_to_flags(table.column(NOT_APPLICABLE), self.schema.names) if NOT_APPLICABLE in table.column_names
                 else np.zeros((table.num_rows, len(self.schema.names)), dtype=bool))
        row_ids = table.column(ROW_ID).to_numpy(zero_copy_only=False)
        found: list[tuple[_Check, np.ndarray, pa.ChunkedArray]] = []
        for check in self.checks:
            if check.column not in names:
                raise ValidationFailed(f"expectation {check.type} could not run: column {check.column!r} is not "
                                       f"in the batch")
            col = table.column(check.column)
            if check.column in categorical and pa.types.is_string(col.type):  # sets compare normalised text
                col = pa.chunked_array([normalize_array(col)])
            applicable = ~flags[:, check.flag] if check.flag is not None else np.ones(table.num_rows, dtype=bool)
            rows = np.flatnonzero(_unexpected(check, col, applicable))
            if len(rows):
                found.append((check, rows, col))
        reasons: dict[int, list[str]] = {}
        for check, rows, col in found:  # the values as GX reports them: from the column as pandas reads it
            values = col.to_pandas()
            self.summary.by_expectation[check.label] += len(rows)
            self.last_failures[check.label] += len(rows)
            for i in rows:
                reasons.setdefault(int(row_ids[i]), []).append(f"{check.label}: value {_plain(values.iloc[i])!r}")
        return reasons

    def _gx_reasons(self, table: pa.Table, names: list[str]) -> dict[int, list[str]]:
        frame = _frame(self.schema, table, names)
        batch = self._batch_definition.get_batch(batch_parameters={"dataframe": frame})
        results = batch.validate(self.suite, result_format={
            "result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID],
            "return_unexpected_index_query": False, "partial_unexpected_count": 0})
        self.last_results = results
        reasons: dict[int, list[str]] = {}
        table_failures = []
        for r in results.results:
            if r.exception_info and r.exception_info.get("raised_exception"):
                raise ValidationFailed(f"expectation {r.expectation_config.type} could not run: "
                                       f"{r.exception_info.get('exception_message')}")
            if r.success:
                continue
            cfg = r.expectation_config
            column = cfg.kwargs.get("column")
            index = (r.result or {}).get("unexpected_index_list")
            label = f"{cfg.type}" + (f"({column})" if column else "")
            if index is None:
                table_failures.append(f"{label}: observed {r.result.get('observed_value')!r}")
                continue
            self.summary.by_expectation[label] += len(index)
            self.last_failures[label] += len(index)
            for item in index:
                rid = int(item[ROW_ID])
                value = item.get(column) if column else None
                reasons.setdefault(rid, []).append(f"{label}: value {_plain(value)!r}")
        if table_failures:
            raise ValidationFailed("table-level expectation(s) failed: " + "; ".join(table_failures))
        return reasons

    def write_data_docs(self, table: pa.Table, out_dir: str | Path, *, run_id: str | None = None,
                        asset: str | None = None) -> Path:
        """Render GX Data Docs (HTML) for a validation of ``table`` into ``out_dir``; returns index.html."""
        return write_data_docs(self.schema, self.stage, table, out_dir, run_id=run_id, asset=asset)


def write_data_docs(schema: TableSchema, stage: Stage, table: pa.Table, out_dir: str | Path, *,
                    run_id: str | None = None, asset: str | None = None, assets: str | Path | None = None) -> Path:
    """GX Data Docs of ``table`` (rows before the suite's filter, so that its failures show)
    under the data asset ``asset`` (default: the schema's table name) and the run name ``run_id``.

    ``out_dir`` gets the pages a person reads and nothing of GX's working state (its project is
    made in a temporary folder): ``index.html`` (every validation of the run with its status,
    written here, no script needed), ``validations/...`` and ``expectations/...``. Their styles,
    fonts and images live in ``assets`` (default ``out_dir/static``; a run's reports share one
    folder per output, ``reports/_assets``), copied there once."""
    import tempfile

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    assets = Path(assets).resolve() if assets is not None else out_dir / "static"
    with tempfile.TemporaryDirectory() as project:
        site = _render_gx_site(schema, stage, table, Path(project), run_id=run_id, asset=asset)
        return _publish_site(site, out_dir, assets, asset or schema.name, run_id)


def _render_gx_site(schema: TableSchema, stage: Stage, table: pa.Table, out_dir: Path, *, run_id: str | None,
                    asset: str | None) -> Path:
    """GX's own Data Docs site of the validation, in a GX project under ``out_dir``; its folder."""
    gx = _gx()
    context = gx.get_context(mode="file", project_root_dir=str(out_dir))
    try:
        context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    except AttributeError:
        pass
    name = re.sub(r"[^A-Za-z0-9_]", "_", f"lakefill_{schema.name}_{stage}")
    for existing in list(context.checkpoints.all()):
        context.checkpoints.delete(existing.name)
    for existing in list(context.validation_definitions.all()):
        context.validation_definitions.delete(existing.name)
    for existing in list(context.suites.all()):
        context.suites.delete(existing.name)
    if name in context.data_sources.all():
        context.data_sources.delete(name)
    suite = context.suites.add(build_suite(schema, stage=stage))
    source = context.data_sources.add_pandas(name)
    batch_definition = source.add_dataframe_asset(asset or schema.name).add_batch_definition_whole_dataframe("whole")
    vd = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_definition, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=name, validation_definitions=[vd], actions=[gx.checkpoint.UpdateDataDocsAction(name="docs")],
        result_format={"result_format": "SUMMARY"}))
    names = [n for n in table.column_names if not n.startswith("_lf_")]
    run = {}
    if run_id:
        from great_expectations.core.run_identifier import RunIdentifier

        run = {"run_id": RunIdentifier(run_name=run_id)}
    checkpoint.run(batch_parameters={"dataframe": _frame(schema, table, names)}, **run)
    found = sorted(out_dir.rglob("index.html"))
    if not found:
        raise RuntimeError(f"Great Expectations wrote no Data Docs under {out_dir}")
    return found[0].parent


_STATIC = Path(__file__).resolve().parent / "_static"
_REMOTE_TAG = re.compile(r'<(?:link|script)\b[^>]*(?:href|src)="https?://[^"]*"[^>]*>(?:\s*</script>)?', re.I)
_REMOTE_IMG = re.compile(r'(<img\b[^>]*?)\ssrc="https?://[^"]*"', re.I)
_REMOTE_CSS_URL = re.compile(r"url\('https?://[^']*'\)")


_ICONS = [(re.compile(r'(<i\b[^>]*\bfa-check-circle\b[^>]*>)(\s*</i>)?'), "\u2713"),
          (re.compile(r'(<i\b[^>]*\bfa-(?:times|times-circle|exclamation-triangle|exclamation-circle)\b[^>]*>)(\s*</i>)?'), "\u2717"),
          (re.compile(r'(<i\b[^>]*\bfa-question-circle\b[^>]*>)(\s*</i>)?'), "?")]
_STATIC_REF = re.compile(r'((?:href|src)=")(?:\./)?(?:\.\./)*static/')
_STATUS = re.compile(r"\b(Succeeded|Failed)\b")
_NO_SRC_IMG = re.compile(r"<img\b(?:(?!\bsrc=)[^>])*>", re.I | re.S)


def _local_img(tag: str, to_assets: str) -> str:
    """An image whose remote source was dropped: GX's logo from the shipped assets, else nothing
    (a broken image icon helps nobody)."""
    if "Great Expectations" in tag:
        return tag.replace("<img", f'<img src="{to_assets}/images/logo-long.png"', 1)
    return ""


def _publish_site(site: Path, out_dir: Path, assets: Path, asset: str, run_id: str | None) -> Path:
    """GX's site made readable offline and without GX: its pages into ``out_dir`` (the data
    asset's name and the run written in, remote references dropped, Font Awesome's status
    icons as text marks, ``static/`` links pointing at ``assets``), its static files into
    ``assets`` where missing, and an index written here listing every validation page."""
    import html
    import os
    import shutil

    static = site / "static"
    for f in sorted(static.rglob("*")) if static.exists() else []:
        if f.is_file() and "fonts" not in f.parts:  # the fonts need Font Awesome's CSS, dropped offline
            target = assets / f.relative_to(static)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
    css = assets / "offline" / "bootstrap.min.css"
    if not css.exists():
        css.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_STATIC / "bootstrap-4.3.1.min.css", css)
    label = html.escape(asset) + (f" (run {html.escape(run_id)})" if run_id else "")
    rows = []
    for page in sorted(site.rglob("*.html")):
        rel = page.relative_to(site)
        if rel.as_posix() == "index.html":
            continue
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        to_assets = os.path.relpath(assets, target.parent).replace(os.sep, "/")
        text = page.read_text(encoding="utf-8").replace("Data asset: None", f"Data asset: {label}")
        text = _REMOTE_TAG.sub(lambda m: f'<link rel="stylesheet" href="{to_assets}/offline/bootstrap.min.css">'
                               if "bootstrap.min.css" in m.group(0) and "<link" in m.group(0).lower() else "", text)
        text = _REMOTE_IMG.sub(r"\1", text)
        text = _REMOTE_CSS_URL.sub("none", text)
        text = _STATIC_REF.sub(lambda m: f"{m.group(1)}{to_assets}/", text)
        text = _NO_SRC_IMG.sub(lambda m: _local_img(m.group(0), to_assets), text)
        for pattern, mark in _ICONS:
            text = pattern.sub(lambda m: f"{m.group(1)}{mark}</i>", text)
        target.write_text(text, encoding="utf-8")
        if rel.parts[0] == "validations":
            status = _STATUS.search(text)
            rows.append((rel.as_posix(), rel.parts[1] if len(rel.parts) > 1 else rel.stem,
                         status.group(1) if status else "unknown"))
    index = out_dir / "index.html"
    to_assets = os.path.relpath(assets, out_dir).replace(os.sep, "/")
    marks = {"Succeeded": ("ok", "\u2713 Succeeded"), "Failed": ("bad", "\u2717 Failed")}
    body = "".join(
        f'<tr class="validation"><td><a href="{html.escape(href)}">{html.escape(suite)}</a></td>'
        f'<td>{label}</td><td class="{marks.get(status, ("bad", status))[0]}">{marks.get(status, ("bad", status))[1]}</td></tr>'
        for href, suite, status in rows)
    index.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Data Docs: {label}</title>
<link rel="stylesheet" href="{to_assets}/offline/bootstrap.min.css">
<style>body {{ margin: 2rem; }} td.ok {{ color: #1a7f37; }} td.bad {{ color: #b00; }}</style></head>
<body><h1>Data Docs: {label}</h1>
<p>Great Expectations validation results of this run ({len(rows)}); each opens its page.</p>
<table class="table table-sm" id="validations"><tr><th>expectation suite</th><th>data asset</th><th>status</th></tr>
{body}</table></body></html>
""", encoding="utf-8")
    return index


def _plain(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    return value
