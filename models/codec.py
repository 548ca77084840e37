"""The table codec: typed Arrow columns <-> a float tensor, a missing-mask and back.

Numeric, integer and datetime columns are scaled robustly (median, IQR); booleans and
categoricals become one-hot blocks with an "unknown" slot on the input side (a value unseen in
training is not an error) and a softmax over the known values on the output side. Text and id
columns pass through untouched and are never imputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakefill._arrow import normalize_array
from lakefill.schema import ARROW_TYPES
from lakefill.schema import TableSchema

__all__ = ["TableCodec", "Encoded", "NotFittedError"]

NUMERIC = ("numeric", "integer", "decimal", "datetime")
CATEGORICAL = ("categorical", "boolean")


class NotFittedError(RuntimeError):
    """The codec was used before ``fit``."""


@dataclass
class Encoded:
    """A batch as the network sees it."""

    values: np.ndarray  # (n, n_in) float32; 0 where missing
    observed: np.ndarray  # (n, n_cols) bool: the cell had a value
    targets_num: np.ndarray  # (n, n_num) float32 scaled numeric targets (0 where missing)
    targets_cat: np.ndarray  # (n, n_cat) int64 category index (-1 where missing or unknown)


class TableCodec:
    """Fitted once on the training table, saved with the model (JSON state, no pickle)."""

    def __init__(self, *, schema: TableSchema):
        self.schema = schema

    def fit(self, table: pa.Table) -> "TableCodec":
        cols = [c for c in self.schema.columns if c.impute]
        if not cols:
            raise ValueError("the schema marks no column for imputation (impute: true); nothing to learn")
        self.num_columns_ = [c.name for c in cols if c.type in NUMERIC]
        self.cat_columns_ = [c.name for c in cols if c.type in CATEGORICAL]
        self.types_ = {c.name: c.type for c in cols}
        self.center_, self.scale_, self.lo_, self.hi_ = {}, {}, {}, {}
        for name in self.num_columns_:
            x = _numeric(table.column(name))
            x = x[~np.isnan(x)]
            if len(x) == 0:
                raise ValueError(f"column {name!r} has no observed values to learn from; set impute: false for it")
            q1, med, q3 = np.percentile(x, [25, 50, 75])
            scale = (q3 - q1) / 1.349
            if not scale > 0:
                scale = float(np.std(x)) or float(np.max(x) - np.min(x)) or 1.0
            self.center_[name], self.scale_[name] = float(med), float(scale)
            self.lo_[name], self.hi_[name] = float(np.min(x)), float(np.max(x))
        self.categories_ = {}
        for name in self.cat_columns_:
            spec = self.schema.column(name)
            if spec.type == "boolean":
                self.categories_[name] = ["false", "true"]
            else:
                values = pc.unique(pc.drop_null(normalize_array(table.column(name)))).to_pylist()
                known = list(spec.categories or [])
                self.categories_[name] = known + sorted(v for v in values if v not in known)
                if not self.categories_[name]:
                    raise ValueError(f"column {name!r} has no observed values to learn from; set impute: false for it")
        return self

    # -------------------------------------------------------------------------- layout
    def _check(self) -> None:
        if not hasattr(self, "num_columns_"):
            raise NotFittedError("this TableCodec is not fitted yet: call fit(table) first")

    @property
    def columns(self) -> list[str]:
        self._check()
        return self.num_columns_ + self.cat_columns_

    @property
    def cat_sizes(self) -> list[int]:
        return [len(self.categories_[c]) for c in self.cat_columns_]

    @property
    def n_inputs(self) -> int:
        return len(self.num_columns_) + sum(k + 1 for k in self.cat_sizes)

    def input_slices(self) -> list[slice]:
        """For each model column, its slice of the input vector."""
        out, pos = [], 0
        for _ in self.num_columns_:
            out.append(slice(pos, pos + 1))
            pos += 1
        for k in self.cat_sizes:
            out.append(slice(pos, pos + k + 1))
            pos += k + 1
        return out

    # -------------------------------------------------------------------------- encode
    def encode(self, table: pa.Table) -> Encoded:
        self._check()
        n = table.num_rows
        n_num = len(self.num_columns_)
        values = np.zeros((n, self.n_inputs), dtype=np.float32)
        observed = np.zeros((n, len(self.columns)), dtype=bool)
        t_num = np.zeros((n, n_num), dtype=np.float32)
        t_cat = np.full((n, len(self.cat_columns_)), -1, dtype=np.int64)
        for j, name in enumerate(self.num_columns_):
            x = _numeric(table.column(name))
            ok = ~np.isnan(x)
            z = np.where(ok, (x - self.center_[name]) / self.scale_[name], 0.0).astype(np.float32)
            values[:, j] = z
            t_num[:, j] = z
            observed[:, j] = ok
        pos = n_num
        for k, name in enumerate(self.cat_columns_):
            cats = self.categories_[name]
            col = table.column(name)
            if self.types_[name] == "boolean":
                col = pc.if_else(col, "true", "false") if pa.types.is_boolean(col.type) else col
            else:
                col = normalize_array(col)  # compared as the schema's categories are: trimmed, NFC
            idx = np.asarray(pc.fill_null(pc.index_in(col, value_set=pa.array(cats, pa.string())), -1).to_numpy(zero_copy_only=False))
            present = np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False), dtype=bool)
            known = idx >= 0
            rows = np.nonzero(present)[0]
            slot = np.where(known[rows], idx[rows], len(cats))  # unknown bucket is the last slot
            values[rows, pos + slot] = 1.0
            t_cat[:, k] = np.where(known & present, idx, -1)
            observed[:, n_num + k] = present
            pos += len(cats) + 1
        return Encoded(values, observed, t_num, t_cat)

    # -------------------------------------------------------------------------- decode
    def decode_into(self, table: pa.Table, num: np.ndarray, cat_probs: list[np.ndarray], fill: np.ndarray) -> pa.Table:
        """Write model outputs into ``table`` where ``fill`` (n, n_cols) is set; other cells stay."""
        self._check()
        arrays = {n: table.column(n) for n in table.column_names}
        for j, name in enumerate(self.num_columns_):
            if not fill[:, j].any():
                continue
            x = num[:, j].astype(np.float64) * self.scale_[name] + self.center_[name]
            arrays[name] = _fill_numeric(table.column(name), x, fill[:, j], self.types_[name], self.lo_[name], self.hi_[name])
        for k, name in enumerate(self.cat_columns_):
            j = len(self.num_columns_) + k
            if not fill[:, j].any():
                continue
            picks = np.asarray(self.categories_[name], dtype=object)[np.argmax(cat_probs[k], axis=1)]
            col = table.column(name)
            if self.types_[name] == "boolean":
                new = pa.array(picks == "true", pa.bool_())
            else:
                new = pa.array(picks.tolist(), pa.string())
            arrays[name] = pc.if_else(pa.array(fill[:, j]), new, col)
        return pa.table(arrays)

    def error_weights(self) -> np.ndarray:
        """Per numeric column, the factor that turns a scaled squared error into one on the
        column's min-max [0, 1] scale (what the benchmarks score)."""
        self._check()
        return np.array([(self.scale_[c] / ((self.hi_[c] - self.lo_[c]) or 1.0)) ** 2 for c in self.num_columns_])

    def unscale(self, name: str, z: np.ndarray) -> np.ndarray:
        return z * self.scale_[name] + self.center_[name]

    # -------------------------------------------------------------------------- state
    def state(self) -> dict:
        self._check()
        return {"num_columns": self.num_columns_, "cat_columns": self.cat_columns_, "types": self.types_,
                "center": self.center_, "scale": self.scale_, "lo": self.lo_, "hi": self.hi_,
                "categories": self.categories_}

    @classmethod
    def from_state(cls, state: dict, *, schema: TableSchema) -> "TableCodec":
        codec = cls(schema=schema)
        codec.num_columns_ = list(state["num_columns"])
        codec.cat_columns_ = list(state["cat_columns"])
        codec.types_ = dict(state["types"])
        codec.center_, codec.scale_ = dict(state["center"]), dict(state["scale"])
        codec.lo_, codec.hi_ = dict(state["lo"]), dict(state["hi"])
        codec.categories_ = {k: list(v) for k, v in state["categories"].items()}
        return codec


def _numeric(col) -> np.ndarray:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_timestamp(col.type):
        col = pc.divide(col.cast(pa.int64()).cast(pa.float64()), 1e6)
    return np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _fill_numeric(col, x: np.ndarray, fill: np.ndarray, type_: str, lo: float, hi: float) -> pa.Array:
    x = np.clip(x, lo, hi)  # an imputed value never leaves the range seen in training
    if type_ == "integer":
        new = pa.array(np.round(x).astype(np.int64))
    elif type_ == "datetime":
        new = pa.array(np.round(x).astype(np.int64) * 1_000_000).cast(ARROW_TYPES["datetime"])  # whole seconds
    elif type_ == "decimal" and pa.types.is_decimal(col.type):  # the fill rounded to the column's scale
        from decimal import Decimal

        step = Decimal(1).scaleb(-col.type.scale)
        new = pa.array([Decimal(repr(float(v))).quantize(step) if f else None for v, f in zip(x, fill)], col.type)
    else:
        new = pa.array(x, pa.float64())
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return pc.if_else(pa.array(fill), new, col.cast(new.type))
