"""Disguised-null detection: a ``NullPolicy`` is fitted once on a sample and applied to batches.

Detectors (each can be switched off per column in the schema; pinned values always win):

``token``        a value that tables use for "nothing here" (NULL, N/A, ?, -, ., #N/A ...).
``non_numeric``  a column of numbers (>= 20 distinct) with one to three distinct values that
                 are not numbers ("s" for suppressed, "x", "*"): those values stand for a gap.
``sentinel``     a sentinel-looking number (0, -1, -9, -99, 99, 999, 99999 ...) that repeats
                 and lies outside the Tukey fences (1.5 IQR) of the column's other values: a 0
                 that continues the distribution (0, 1, 2 children) is a value, a 0 blood
                 pressure is not. See ``_sentinel_evidence`` for the exact shapes.
``co_missing``   a categorical value whose rows are, nearly all of them, empty elsewhere (a
                 geocoder's "U"nmatched status next to zero coordinates).

Empty and whitespace-only cells are plain nulls, not disguised ones: they are not reported.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms._arrow import flags_to_lists
from transforms._values import NULL_TOKENS, parse_number

__all__ = ["Finding", "NullPolicy", "DISGUISED", "NotFittedError"]

DISGUISED = "_lf_disguised"
_SENTINEL = re.compile(r"^-?9{2,}(\.0+)?$|^-9(\.0+)?$|^-?0*1(\.0+)?$|^0+(\.0+)?$")
_MIN_DISTINCT_NUMBERS = 20
_MAX_NON_NUMERIC = 3
_MIN_ISOLATION = 3.0
_MIN_SPIKE = 5
_NINES = re.compile(r"^9{2,}$")


class NotFittedError(RuntimeError):
    """The policy was applied before ``fit``."""


@dataclass(frozen=True)
class Finding:
    column: str
    value: str
    count: int
    detector: str
    evidence: str


def _is_sentinel(value: str, number: float) -> bool:
    if number == 1:  # 1 is a common true value; only -1 counts
        return False
    return bool(_SENTINEL.match(value))


class NullPolicy:
    """Which values mean "missing", per column, learned on a sample and applied to any batch.

    Parameters
    ----------
    schema : TableSchema, optional
        Supplies pinned ``null_values`` / ``not_null_values`` and switched-off detectors.
    sample_rows : int
        How many rows of the table ``fit`` looks at.
    """

    def __init__(self, *, schema=None, sample_rows: int = 200_000):
        self.schema = schema
        self.sample_rows = sample_rows

    # ---------------------------------------------------------------------------- learning
    def fit(self, table: pa.Table) -> "NullPolicy":
        if self.sample_rows < 1:
            raise ValueError(f"sample_rows must be >= 1, got {self.sample_rows}")
        sample = table.slice(0, self.sample_rows)
        columns = [c for c in sample.column_names if not c.startswith("_lf_")]
        if self.schema is not None:
            self.schema.check_columns(columns, source="NullPolicy.fit")
        counters = {c: Counter(_trimmed(sample.column(c))) for c in columns}
        findings: dict[str, list[Finding]] = {c: [] for c in columns}
        for c in columns:
            findings[c] = self._column_findings(c, counters[c])
        co = self._co_missing(sample, columns, counters, findings)
        for c, extra in co.items():
            findings[c].extend(extra)
        self.findings_ = {c: sorted(f, key=lambda x: (-x.count, x.value)) for c, f in findings.items()}
        self.columns_ = columns
        self.rows_seen_ = sample.num_rows
        return self

    def _rules(self, column: str):
        if self.schema is None or column not in self.schema.names:
            return None
        return self.schema.column(column)

    def _on(self, column: str, detector: str) -> bool:
        rules = self._rules(column)
        return rules is None or rules.detector_on(detector)

    def _column_findings(self, column: str, counts: Counter) -> list[Finding]:
        rules = self._rules(column)
        pinned_null = {v.strip() for v in rules.null_values} if rules else set()
        pinned_value = {v.strip() for v in rules.not_null_values} if rules else set()
        out: list[Finding] = []
        taken: set[str] = set()

        def add(value: str, detector: str, evidence: str) -> None:
            if value in taken or value in pinned_value or value == "":
                return
            taken.add(value)
            out.append(Finding(column, value, counts.get(value, 0), detector, evidence))

        for v in sorted(pinned_null):
            add(v, "pinned", "listed in the schema's null_values")
        if self._on(column, "token"):
            for v in counts:
                if v.lower() in NULL_TOKENS:
                    add(v, "token", f"{v!r} is a common null token")
        rest = {v: k for v, k in counts.items() if v and v not in taken and v not in pinned_value}
        numbers = {v: parse_number(v) for v in rest}
        numeric = {v: x for v, x in numbers.items() if x is not None}
        text = [v for v, x in numbers.items() if x is None]
        n_numeric_cells = sum(rest[v] for v in numeric)
        if self._on(column, "non_numeric") and len(numeric) >= _MIN_DISTINCT_NUMBERS and 0 < len(text) <= _MAX_NON_NUMERIC:
            for v in text:
                add(v, "non_numeric", f"{len(numeric)} distinct numbers ({n_numeric_cells} cells) and only "
                                      f"{len(text)} distinct non-numeric value(s); {v!r} occurs {rest[v]} times")
        if self._on(column, "sentinel") and len(numeric) >= _MIN_DISTINCT_NUMBERS and len(text) <= _MAX_NON_NUMERIC:
            for v, x in numeric.items():
                if rest[v] < 2 or not _is_sentinel(v, x):
                    continue
                others = [(y, rest[u]) for u, y in numeric.items() if u != v and y != x]
                why = _sentinel_evidence(x, rest[v], others)
                if why:
                    add(v, "sentinel", f"{v!r} occurs {rest[v]} times and {why}")
        return out

    def _co_missing(self, sample: pa.Table, columns: list[str], counters: dict[str, Counter],
                    findings: dict[str, list[Finding]]) -> dict[str, list[Finding]]:
        """Categorical values whose rows are, nearly all, empty elsewhere."""
        n = sample.num_rows
        if n < 20:
            return {}
        masks = {}
        for c in columns:
            nulls = {f.value for f in findings[c]} | {""}
            m = np.asarray(_null_mask_from_values(sample.column(c), nulls, tokens=False))
            if 0 < m.mean() < 1:  # a column that is always (or never) empty tells nothing
                masks[c] = m
        if len(masks) < 3:
            return {}
        stack = np.stack(list(masks.values()), axis=1).astype(np.int32)
        total = stack.sum(axis=1)
        out: dict[str, list[Finding]] = {}
        for c in columns:
            if not self._on(c, "co_missing"):
                continue
            counts = counters[c]
            candidates = {v: k for v, k in counts.items() if v and parse_number(v) is None}
            if not (2 <= len(candidates) <= 50):
                continue
            known = {f.value for f in findings[c]}
            values = np.asarray(_trimmed(sample.column(c)), dtype=object)
            own = masks[c] if c in masks else np.zeros(n, dtype=np.int32)
            others = total - own
            base = float(np.median(others))
            for v, k in candidates.items():
                if v in known or k < 3 or k > 0.2 * n:
                    continue
                rows = values == v
                share = float(np.mean(others[rows] >= base + 3))
                rest_share = float(np.mean(others[~rows] >= base + 3))
                if share >= 0.9 and rest_share <= 0.1:
                    out.setdefault(c, []).append(Finding(
                        c, v, k, "co_missing",
                        f"{share:.0%} of the {k} rows with {v!r} have at least {int(base) + 3} other empty cells, "
                        f"against {rest_share:.1%} of the other rows"))
        return out

    # ---------------------------------------------------------------------------- applying
    def _check_fitted(self) -> None:
        if not hasattr(self, "findings_"):
            raise NotFittedError("this NullPolicy is not fitted yet: call fit(table) on a sample first")

    def null_values(self, column: str) -> set[str]:
        self._check_fitted()
        return {f.value for f in self.findings_.get(column, [])}

    def rules_for(self, column: str) -> dict:
        """The schema fields that record this column's findings (for ``infer_schema``)."""
        values = sorted(self.null_values(column) - self._token_values(column))
        return {"null_values": values} if values else {}

    def _token_values(self, column: str) -> set[str]:
        return {f.value for f in self.findings_.get(column, []) if f.detector == "token"}

    def null_mask(self, column: str, values: pa.ChunkedArray | pa.Array) -> pa.Array:
        self._check_fitted()
        return _null_mask_from_values(values, self.null_values(column), tokens=self._on(column, "token"),
                                      keep=self._pinned_values(column))

    def _pinned_values(self, column: str) -> set[str]:
        rules = self._rules(column)
        return {v.strip() for v in rules.not_null_values} if rules else set()

    def apply(self, table: pa.Table) -> tuple[pa.Table, dict[str, int]]:
        """Replace disguised nulls (and blank cells) with real nulls.

        Returns the table, with a ``_lf_disguised`` list column naming the cells replaced as
        disguised nulls in each row, and the per-column count of those replacements.
        """
        self._check_fitted()
        missing = [c for c in self.columns_ if c not in table.column_names]
        if missing:
            raise KeyError(f"the batch lacks column(s) {missing} that the policy was fitted on")
        counts: dict[str, int] = {}
        flags = []
        arrays = {}
        for c in table.column_names:
            col = table.column(c)
            if c not in self.columns_:
                arrays[c] = col
                continue
            trimmed = pc.utf8_trim_whitespace(col)
            blank = pc.fill_null(pc.equal(trimmed, ""), True)
            disguised = pc.and_not(self.null_mask(c, col), blank)
            disguised = pc.fill_null(disguised, False)
            counts[c] = int(pc.sum(disguised).as_py() or 0)
            flags.append(np.asarray(disguised.combine_chunks() if isinstance(disguised, pa.ChunkedArray) else disguised))
            arrays[c] = pc.if_else(pc.or_(blank, disguised), pa.scalar(None, pa.string()), col)
        names = np.asarray(self.columns_, dtype=object)
        arrays[DISGUISED] = flags_to_lists(np.stack(flags, axis=1) if flags else np.zeros((table.num_rows, 0), bool), names)
        return pa.table(arrays), counts

    # ---------------------------------------------------------------------------- reporting
    def to_dict(self) -> dict:
        self._check_fitted()
        return {"rows_seen": self.rows_seen_, "columns": {c: [asdict(f) for f in fs] for c, fs in self.findings_.items()}}

    @classmethod
    def from_dict(cls, data: dict, *, schema=None) -> "NullPolicy":
        policy = cls(schema=schema)
        policy.findings_ = {c: [Finding(**f) for f in fs] for c, fs in data["columns"].items()}
        policy.columns_ = list(data["columns"])
        policy.rows_seen_ = data.get("rows_seen", 0)
        return policy

    def report(self) -> str:
        self._check_fitted()
        lines = [f"{'column':<32} {'value':<12} {'count':>7}  {'detector':<12} evidence"]
        for c in self.columns_:
            for f in self.findings_[c]:
                lines.append(f"{c[:32]:<32} {f.value[:12]:<12} {f.count:>7}  {f.detector:<12} {f.evidence}")
        if len(lines) == 1:
            lines.append("(no disguised nulls found)")
        return "\n".join(lines)


def _trimmed(values: pa.ChunkedArray) -> list[str]:
    return ["" if v is None else v.strip() for v in values.to_pylist()]


def _null_mask_from_values(values, nulls: Iterable[str], *, tokens: bool, keep: Iterable[str] = ()) -> pa.Array:
    trimmed = pc.utf8_trim_whitespace(values)
    mask = pc.or_(pc.fill_null(pc.equal(trimmed, ""), True), pc.is_in(trimmed, value_set=pa.array(sorted(nulls), pa.string())))
    if tokens:
        mask = pc.or_(mask, pc.is_in(pc.utf8_lower(trimmed), value_set=pa.array(sorted(NULL_TOKENS), pa.string())))
    keep = sorted(keep)
    if keep:
        mask = pc.and_(mask, pc.invert(pc.is_in(trimmed, value_set=pa.array(keep, pa.string()))))
    mask = pc.fill_null(mask, True)
    return mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask


def _weighted_quantiles(pairs: list[tuple[float, int]], qs: tuple[float, ...]) -> list[float]:
    pairs = sorted(pairs)
    xs = np.array([p[0] for p in pairs], dtype=float)
    ws = np.cumsum([p[1] for p in pairs], dtype=float)
    total = ws[-1]
    return [float(xs[min(np.searchsorted(ws, q * total, side="left"), len(xs) - 1)]) for q in qs]


def _sentinel_evidence(x: float, count: int, others: list[tuple[float, int]]) -> str | None:
    """Why a repeated sentinel-looking number ``x`` is a disguised null, or None if it is not.

    Three shapes count: the lone negative of a non-negative column (-1 among ages); a Tukey
    outlier (1.5 IQR) that stands apart from its neighbours or spikes; a run of nines (99,
    9999 ...) at the edge of the column that both stands apart and spikes. A 0 at the edge that
    stands apart and spikes is not enough on its own: word counts and sparse features look
    like that (a 0 insulin reading does too, and is missed).
    """
    xs = [y for y, _ in others]
    if x < 0 and min(xs) >= 0:
        return "is the only negative number of a column of non-negative values"
    q1, q3 = _weighted_quantiles(others, (0.25, 0.75))
    iqr = q3 - q1
    if iqr <= 0:
        return None
    lo, hi = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    gap, spacing = _isolation(x, sorted(set(xs)))
    top_other = max(k for _, k in others)
    isolated = gap >= _MIN_ISOLATION * spacing
    spike = count >= _MIN_SPIKE * top_other
    apart = f"stands {gap:.6g} from the nearest other value (typical spacing there {spacing:.3g})"
    repeats = f"repeats where no other value repeats more than {top_other} times"
    if x < lo or x > hi:
        fences = f"lies outside the Tukey fences [{lo:.6g}, {hi:.6g}] of the other values (Q1={q1:.6g}, Q3={q3:.6g})"
        if isolated:
            return f"{fences} and {apart}"
        if spike:
            return f"{fences} and {repeats}"
        return None
    if _NINES.match(f"{abs(x):.0f}") and (x < min(xs) or x > max(xs)) and isolated and spike:
        return f"is at the edge of the column, {apart}, and {repeats}"
    return None


def _isolation(x: float, others: list[float], k: int = 10) -> tuple[float, float]:
    """The gap from ``x`` to its nearest other value, and the median spacing of the ``k``
    distinct values nearest to it (how far apart values usually are in that region)."""
    arr = np.asarray(others, dtype=float)
    order = np.argsort(np.abs(arr - x), kind="stable")[:k]
    near = np.sort(arr[order])
    gap = float(np.min(np.abs(arr - x)))
    diffs = np.diff(near)
    spacing = float(np.median(diffs)) if len(diffs) else math.inf
    return gap, spacing
