"""Disguised-null detection: a ``NullPolicy`` is fitted once on a sample and applied to batches.

Detectors (each can be switched off per column in the schema; pinned values always win):

``token``        a value that tables use for "nothing here" (NULL, N/A, ?, -, ., #N/A ...).
``non_numeric``  a column of numbers (>= 20 distinct) with one to three distinct values that
                 are not numbers ("s" for suppressed, "x", "*"): those values stand for a gap.
``sentinel``     a sentinel-looking number (0, -1, -9, -99, 99, 999, 99999 ...) that repeats
                 and lies outside the Tukey fences (1.5 IQR) of the column's other values: a 0
                 that continues the distribution (0, 1, 2 children) is a value, a 0 blood
                 pressure is not. See ``_sentinel_evidence`` for the exact shapes. Such a value
                 is the column's minimum or maximum, so it is then weighed against the evidence
                 that it is the column's real boundary (``NullPolicy._judge_edges``): the edge of
                 a clipped scale (-1 with a +1 as frequent) is a value; one that does not stand
                 apart from the others is a value unless its rows look like a random sample of
                 the table, and then a suspect (kept); one that stands apart is replaced.
``co_missing``   a categorical value whose rows are, nearly all of them, empty elsewhere (a
                 geocoder's "U"nmatched status next to zero coordinates).
``structural``   a 0 that means "this does not apply to this row" (a school's pupils in a grade it
                 does not teach): in a column of counts (integers, or percentages written with
                 "%") whose other values sit far from 0 (median >= 10), the 0 is common (10% to
                 95% of the numbers), at least 10x as frequent as all values in (0, 2] together (a
                 gap between 0 and the bulk), and the same rows are 0 in a sibling column of the
                 same shape (one column's zeros fall on the other's well beyond chance: score
                 >= 0.8, see ``_co_zero``; a count and a percentage are siblings both ways,
                 two percentages are not), and the
                 column is no bounded scale (its values piling up at the top of their range,
                 as a pixel's do at 255: ``_piles_at_top``). See ``_structural``.
``syntactic``    a value in a format of its own in a column written in one format ("All
                 Indicators" among year ranges "2009-10"), or a value of one repeated character
                 where the column's values are in one format ("9999999999" among phone
                 numbers). See ``_syntactic``.
``random``       a column's most frequent value, a spike, whose rows look like a random sample
                 of the table while the column's other values depend on the other columns (a
                 form's default for "unknown"; FAHES's random-DMV test). See ``_random_stand_ins``.

Each finding has a ``kind``: ``missing`` (the value is there but unknown: the cell is nulled and
imputed) or ``not_applicable`` (the value does not exist: the cell is nulled, listed in the
row's ``_lf_not_applicable`` and never imputed; the schema's ``not_applicable`` per column can
keep the original value with the flag, or impute it anyway). Only ``structural`` findings are
``not_applicable``.

A value that covers most of a column (more than ``MAX_REPLACED_SHARE`` of its non-empty cells)
is never turned into invented values on the detector's word alone: a ``missing`` finding that
large is a *suspect*: reported with its evidence, left in the data as a value, unless the
schema pins it in ``null_values`` (a value that is the only one the column holds is replaced:
there is no column of values to protect, and a column with nothing observed is not imputed).
On the dev tables the largest share of a labelled disguised null is pima's insulin 0, 48.7%;
UCI adult's capital_loss 0, a real zero, covers 95%.

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

from lakefill._arrow import as_text, flags_to_lists, is_typed_number, list_value_counts
from lakefill._values import NULL_TOKENS, parse_number, parse_number_array

__all__ = ["Finding", "NullPolicy", "DISGUISED", "NOT_APPLICABLE", "NotFittedError", "MAX_REPLACED_SHARE"]

DISGUISED = "_lf_disguised"
NOT_APPLICABLE = "_lf_not_applicable"
MAX_REPLACED_SHARE = 0.5
_NA_MIN_SHARE = 0.10       # a structural 0 is common ...
_NA_MAX_SHARE = 0.95       # ... but not nearly all the column (then 0 is its usual value: a pixel off the digit)
_NA_MIN_MEDIAN = 10.0      # ... in a column whose other values are tens of units from it ...
_NA_MIN_GAP_RATIO = 10.0   # ... and at least 10x as frequent as all values in (0, 2] together
_NA_MIN_CO_ZERO = 0.8      # ... with a sibling whose zeros fall on the same rows
_SENTINEL = re.compile(r"^-?9{2,}(\.0+)?$|^-9(\.0+)?$|^-?0*1(\.0+)?$|^0+(\.0+)?$")
_MIN_DISTINCT_NUMBERS = 20
_MAX_NON_NUMERIC = 3
_MIN_ISOLATION = 3.0
_MIN_SPIKE = 5
_NINES = re.compile(r"^9{2,}$")
# a repeated edge value is a boundary of the column's range, not a stand-in, when ...
_MIRROR_SHARE = 0.2     # ... the value at the opposite edge repeats at least a fifth as often ...
_CLIP_MAX_GAP = 0.25    # ... and the value is within this share of the range from the others;
_BANDS = 20            # a 0 is the bottom of a bounded scale when the top twentieth of the range ...
_PILE_RATIO = 3.0      # ... holds 3x the values of the median twentieth (a pile at the top edge)
_APART_IQR = 1.0        # a value at least one IQR from its nearest other value ...
_FAR_FENCE = 3.0        # ... or beyond Tukey's far-out fence (3 IQR) stands apart from the column;
_RANDOM_SPREAD = 0.5    # rows whose medians sit within half an IQR of the others' on every observed
_MIN_RANDOM_ROWS = 5    # numeric column (of at least 5 of its rows), beyond what chance moves the median
_MEDIAN_NOISE = 1.86    # of k random rows (2 standard errors, 0.93 IQR / sqrt(k)), look like a random sample
# syntactic outliers: a column written in one format (its values' character shapes) ...
_FORMAT_SHARE = 0.9     # ... that covers at least 90% of its non-empty cells ...
_FORMAT_VALUES = 3      # ... with at least 3 distinct values (a format, not one constant);
_RARE_FORMAT = 0.02     # a value in a format of its own (run shape) that at most 2% of the cells share ...
_MAX_RARE = 3           # ... among at most 3 such values (more: a column of mixed formats, not stand-ins);
_REPEAT_MIN_LEN = 4     # a value of one character repeated, at least 4 long, in the column's own format ...
_REPEAT_SPIKE = 5.0     # ... 5x as frequent as the column's values usually are (and at least 3 times)
# random stand-ins (FAHES's RAND): a column's most frequent value, a spike ...
_RANDOM_MIN_ROWS = 30   # ... of at least 30 rows ...
_RANDOM_SPIKE = 3.0     # ... 3x as frequent as the column's next value, whose rows match the column's others
_RANDOM_IQR = 0.1       # within chance (medians at most 0.1 IQR further apart than chance puts them ...
_RANDOM_TV = 0.02       # ... category shares at most 0.02 in total variation)
_RANDOM_COLUMNS = 2     # on at least 2 other columns (of at most 16 compared), in a column whose other values'
_RANDOM_MAX_COLUMNS = 16
_RANDOM_SAMPLE = 20_000  # rows judged
_DEPENDENT_IQR = 0.5    # rows do differ from the table (medians 0.5 IQR apart beyond chance ...
_DEPENDENT_TV = 0.1     # ... or category shares 0.1 apart in total variation beyond chance)
_MAX_CATEGORIES = 50    # a column compared by its category shares has at most 50 distinct values


class NotFittedError(RuntimeError):
    """The policy was applied before ``fit``."""


@dataclass(frozen=True)
class Finding:
    column: str
    value: str
    count: int
    detector: str
    evidence: str
    kind: str = "missing"  # "missing" (unknown: imputed) or "not_applicable" (does not exist: never imputed)
    share: float = 0.0     # of the column's non-empty cells in the sample
    suspect: bool = False  # reported, but left in the data as a value (see MAX_REPLACED_SHARE)


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
        sample = as_text(table.slice(0, self.sample_rows))  # every rule reads a number column's text
        if self.schema is not None:
            self.schema.check_columns([c for c in sample.column_names if not c.startswith("_lf_")], source="NullPolicy.fit")
        # text columns only: nested and binary columns pass through (see lakefill.transforms.io)
        columns = [c for c in sample.column_names if not c.startswith("_lf_") and pa.types.is_string(sample.schema.field(c).type)]
        counters = {c: _trimmed_counts(sample.column(c)) for c in columns}
        findings: dict[str, list[Finding]] = {c: [] for c in columns}
        for c in columns:
            findings[c] = self._column_findings(c, counters[c])
        findings = self._judge_edges(sample, columns, counters, findings)
        co = self._co_missing(sample, columns, counters, findings)
        for c, extra in co.items():
            findings[c].extend(extra)
        for c in columns:
            findings[c].extend(self._syntactic(c, counters[c], findings[c]))
        for c, extra in self._random_stand_ins(sample, columns, counters, findings).items():
            findings[c].extend(extra)
        for c, extra in self._structural(sample, columns, counters, findings).items():
            findings[c].extend(extra)
        findings = {c: [self._weighed(f, counters[c]) for f in fs] for c, fs in findings.items()}
        self.findings_ = {c: sorted(f, key=lambda x: (-x.count, x.value)) for c, f in findings.items()}
        self.columns_ = columns
        self.rows_seen_ = sample.num_rows
        return self

    def _weighed(self, finding: Finding, counts: Counter) -> Finding:
        """The finding with its share of the column's non-empty cells, and whether it is a suspect."""
        filled = sum(k for v, k in counts.items() if v)
        share = finding.count / filled if filled else 0.0
        # a value that is all the column holds is no column of values to protect: it is replaced
        # (and a column with nothing observed is never imputed)
        suspect = finding.suspect or (finding.kind == "missing" and finding.detector != "pinned"
                                      and MAX_REPLACED_SHARE < share < 1.0)
        evidence = finding.evidence
        if suspect and not finding.suspect:
            evidence += (f"; it covers {share:.0%} of the column's non-empty cells, so it is reported as a suspect and "
                         f"kept as a value (list it in the schema's null_values to replace it)")
        return Finding(finding.column, finding.value, finding.count, finding.detector, evidence, finding.kind,
                       round(share, 6), suspect)

    def _judge_edges(self, sample: pa.Table, columns: list[str], counters: dict[str, Counter],
                     findings: dict[str, list[Finding]]) -> dict[str, list[Finding]]:
        """Weigh every sentinel finding against the evidence that it is a real boundary value.

        A sentinel is the column's minimum or maximum. It is a *boundary* (no finding) when the
        column is a clipped scale: the value at the opposite edge (its mirror) is a pile, repeating
        at least ``_MIRROR_SHARE`` as often as the value and ``_PILE_RATIO`` times as often as the
        column's values usually do, and the value is within ``_CLIP_MAX_GAP`` of the range from the
        other values (ionosphere's -1 with its +1). A negative value in a column of non-negative
        values is a stand-in. Otherwise it *stands apart* when the gap to the nearest other value
        is at least ``_APART_IQR`` IQR of the other values or it lies beyond Tukey's far-out fence
        (3 IQR): a stand-in (99999 among incomes, 0 among blood pressures), replaced as before. A value at
        the edge that does not stand apart (the low end of a non-negative quantity, 0 kg of fly
        ash) stays a value unless its rows look like a random sample of the table: on every other
        numeric column where at least ``_MIN_RANDOM_ROWS`` of its rows hold a number (other columns'
        own repeated edge values left out), their median lies within ``_RANDOM_SPREAD`` IQR of the
        other rows' beyond chance (``_row_spread``; FAHES's random-DMV test). Then it is a *suspect*: reported, kept as a value
        unless the schema pins it (a 0 skin fold among values from 7 up). Rows that differ on what
        is observed (mixes without fly ash hold more cement) belong to a real category.
        """
        if not any(f.detector == "sentinel" for fs in findings.values() for f in fs):
            return findings
        numbers = {c: _numbers(sample.column(c), counters[c]) for c in columns}
        edges = {c: _edge_values(counters[c]) for c in columns}
        out = {}
        for c, fs in findings.items():
            kept = []
            for f in fs:
                if f.detector != "sentinel":
                    kept.append(f)
                    continue
                judged = self._judge_edge(f, c, numbers, edges)
                if judged is not None:
                    kept.append(judged)
            out[c] = kept
        return out

    def _judge_edge(self, f: Finding, column: str, numbers: dict[str, np.ndarray],
                    edges: dict[str, set[float]]) -> Finding | None:
        values = numbers[column]
        x = parse_number(f.value)
        at = values == x
        others = values[~at & ~np.isnan(values)]
        if len(others) < 2:
            return f
        lo, hi = float(others.min()), float(others.max())
        span = max(hi, x) - min(lo, x)
        gap = float(np.min(np.abs(others - x)))
        if span <= 0:
            return f
        low_edge = x <= lo
        if x < 0 <= lo:  # -1 among ids or ages: no other value of the column is on its side of 0
            return f
        mirror = int(np.sum(others == (hi if low_edge else lo)))
        typical = float(np.median(np.unique(others, return_counts=True)[1]))
        if mirror >= max(2, _MIRROR_SHARE * f.count, _PILE_RATIO * typical) and gap <= _CLIP_MAX_GAP * span:
            return None  # a clipped scale: both edges pile up
        q1, q3 = np.quantile(others, (0.25, 0.75))
        iqr = float(q3 - q1)
        far = x < q1 - _FAR_FENCE * iqr or x > q3 + _FAR_FENCE * iqr
        if iqr <= 0 or gap >= _APART_IQR * iqr or far:
            return f
        spread = _row_spread(at, column, numbers, edges)
        if spread is None or spread >= _RANDOM_SPREAD:
            return None  # the edge of the column's range, its rows a group of their own
        edge = "minimum" if low_edge else "maximum"
        evidence = (f"{f.evidence}; but it is the column's {edge} and does not stand apart (gap {gap:.6g} to the "
                    f"nearest other value, under {_APART_IQR:g} IQR = {iqr:.6g}), so it may be the edge of the "
                    f"range; its rows look like a random sample of the table (their medians within "
                    f"{max(spread, 0):.2f} IQR of the other rows' on every observed numeric column, beyond chance), so it is reported as a "
                    f"suspect and kept as a value (list it in the schema's null_values to replace it)")
        return Finding(f.column, f.value, f.count, f.detector, evidence, f.kind, f.share, True)

    def _structural(self, sample: pa.Table, columns: list[str], counters: dict[str, Counter],
                    findings: dict[str, list[Finding]]) -> dict[str, list[Finding]]:
        """Zeros that mean "not applicable": common, apart from the bulk, in blocks across siblings.

        A column qualifies when it holds counts (all its other numbers are integers, or all are
        written as percentages), none negative, with at least 20 distinct numbers and 20 that
        are not 0, their median >= 10; its 0 (any spelling: "0", "0.0", "0%") covers >= 10% of
        the numbers and occurs >= 10x as often as all values in (0, 2] together. Such a 0 is a
        structural "not applicable" when a sibling column that qualifies too has its zeros on
        the same rows (``_co_zero`` >= 0.8); the pair is judged both ways (a percentage found
        through its count makes the count found through the percentage), except two
        percentages (shares of the same counts are 0 together: no evidence). A lone zero-heavy
        column is not enough (a count that is often really 0); a 0 already found by another
        detector keeps that finding.
        """
        shapes = {}
        for c in columns:
            shape = _zero_spike(counters[c], taken={f.value for f in findings[c]})
            if shape is not None:
                shapes[c] = shape
        if len(shapes) < 2:
            return {}
        zero_rows = {}
        filled_rows = {}
        for c in shapes:
            values = pc.utf8_trim_whitespace(sample.column(c))
            zero_rows[c] = np.asarray(pc.fill_null(pc.is_in(values, value_set=pa.array(sorted(shapes[c]["zeros"]), pa.string())), False))
            filled_rows[c] = np.asarray(pc.fill_null(pc.not_equal(values, ""), False))
        out: dict[str, list[Finding]] = {}
        for c, shape in shapes.items():
            if not self._on(c, "structural"):
                continue
            siblings = []
            for o in shapes:
                # a pair of percentages is no evidence (two shares of the same count, 0 together); a
                # count and a percentage are judged both ways: a percentage's zeros found through its
                # count sibling make the count's zeros, on the same rows, found through the percentage
                if o == c or (shapes[o]["percent"] and shapes[c]["percent"]):
                    continue
                score = _co_zero(zero_rows[c], zero_rows[o], filled_rows[c] & filled_rows[o])
                if score >= _NA_MIN_CO_ZERO:
                    siblings.append((score, o))
            if not siblings:
                continue
            siblings.sort(key=lambda t: (-t[0], t[1]))
            names = ", ".join(f"{o!r} ({score:.2f})" for score, o in siblings[:5])
            more = f" and {len(siblings) - 5} more" if len(siblings) > 5 else ""
            rows = np.flatnonzero(zero_rows[c])
            first = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            known = {f.value for f in findings[c]}
            for v in sorted(shape["zeros"] - known):  # a 0 another detector found keeps that finding
                evidence = (f"0 covers {shape['share']:.0%} of the column's numbers ({len(rows)} rows of the sample: "
                            f"{first}) and occurs "
                            f"{shape['gap_ratio']:.3g}x as often as all values in (0, 2] together; the other values "
                            f"have median {shape['median']:.6g} (a gap between 0 and the bulk); the same rows are 0 in "
                            f"{len(siblings)} sibling column(s): {names}{more} (co-zero score); 0 reads as 'does not apply'")
                out.setdefault(c, []).append(Finding(c, v, counters[c][v], "structural", evidence, "not_applicable"))
        return out

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

    def _syntactic(self, column: str, counts: Counter, found: list[Finding]) -> list[Finding]:
        """Syntactic outliers (FAHES's): in a column whose cells are written in one format (the
        character shape of ``_shape``: digits 9, letters A/a, the separators as they are) a value
        of another kind. (1) In a text column (at least half its cells not numbers) whose one
        format covers ``_FORMAT_SHARE`` of the cells: a value whose run shape (``_runs``: "9-9"
        for "2009-10") no more than ``_RARE_FORMAT`` of the cells share, when there are at most
        ``_MAX_RARE`` such values ("All Indicators" among year ranges). (2) In a column of at
        least 20 distinct values in one format: a value in that format made of one repeated
        character, at least ``_REPEAT_MIN_LEN`` long, ``_REPEAT_SPIKE`` times as frequent as the
        column's values usually are ("9999999999" among phone numbers, "0000000" among ids)."""
        if not self._on(column, "syntactic"):
            return []
        taken = {f.value for f in found} | self._pinned_values(column)
        rest = {v: k for v, k in counts.items() if v and v not in taken}
        cells = sum(rest.values())
        if len(rest) < _FORMAT_VALUES or cells < 20:
            return []
        top200 = Counter(rest).most_common(200)  # a text column: most of its cells are not numbers
        text = sum(k for v, k in top200 if parse_number(v) is None) >= 0.5 * sum(k for _, k in top200)
        if not text and not any(len(v) >= _REPEAT_MIN_LEN and k >= 3 and len(set(v)) == 1
                                                for v, k in rest.items()):
            return []  # a column of numbers with no repeated-character value: nothing to look for
        shapes = dict(zip(rest, _shapes(list(rest))))
        by_shape: Counter = Counter()
        for v, k in rest.items():
            by_shape[shapes[v]] += k
        top, top_cells = by_shape.most_common(1)[0]
        in_top = [v for v in rest if shapes[v] == top]
        if top_cells < _FORMAT_SHARE * cells or len(in_top) < _FORMAT_VALUES:
            return []
        example = ", ".join(repr(v) for v in sorted(in_top, key=lambda v: -rest[v])[:3])
        fmt = (f"{top_cells / cells:.0%} of the column's non-empty cells are written {top!r} "
               f"({len(in_top)} distinct values such as {example})")
        out = []
        if text:
            runs = {v: _runs(shapes[v]) for v in rest}
            by_runs: Counter = Counter()
            for v, k in rest.items():
                by_runs[runs[v]] += k
            rare = [v for v in rest if runs[v] != _runs(top) and by_runs[runs[v]] <= _RARE_FORMAT * cells]
            if 0 < len(rare) <= _MAX_RARE:
                for v in sorted(rare):
                    out.append(Finding(column, v, rest[v], "syntactic",
                                       f"{fmt}; {v!r} ({shapes[v]!r}) occurs {rest[v]} times, in a format "
                                       f"{by_runs[runs[v]] / cells:.1%} of the cells share: a syntactic outlier"))
        if len(rest) >= _MIN_DISTINCT_NUMBERS:
            typical = float(np.median(list(rest.values())))
            repeated = [v for v in in_top if len(v) >= _REPEAT_MIN_LEN and len(set(v)) == 1
                        and rest[v] >= max(3, _REPEAT_SPIKE * typical)]
            if 0 < len(repeated) <= 2:
                for v in repeated:
                    out.append(Finding(column, v, rest[v], "syntactic",
                                       f"{fmt}; {v!r} is one character repeated and occurs {rest[v]} times where the "
                                       f"column's values occur {typical:g} time(s) as a rule: a placeholder, not a value"))
        return out

    def _random_stand_ins(self, sample: pa.Table, columns: list[str], counters: dict[str, Counter],
                          findings: dict[str, list[Finding]]) -> dict[str, list[Finding]]:
        """FAHES's random-DMV test: a value filled in where the truth was unknown lands on rows
        drawn at random, so those rows look like a sample of the whole table. A column's most
        frequent value is a stand-in when it is a spike (at least ``_RANDOM_MIN_ROWS`` rows,
        ``_RANDOM_SPIKE`` times its next value), its rows match the column's other rows within
        chance (``_RANDOM_IQR``, ``_RANDOM_TV``) on every other column compared (at least
        ``_RANDOM_COLUMNS``, at most ``_RANDOM_MAX_COLUMNS`` spread over the table: numeric
        columns by their medians, ``_median_gap``; columns of at most ``_MAX_CATEGORIES``
        categories by their shares, ``_share_gap``), and the column's other values are not random
        (a group of them differs from the table beyond chance, by ``_DEPENDENT_IQR`` or
        ``_DEPENDENT_TV``): a column that depends on nothing (every combination of a design
        table) gives no evidence. Judged on at most ``_RANDOM_SAMPLE`` rows of the sample."""
        n = sample.num_rows
        if n < 4 * _RANDOM_MIN_ROWS or len(columns) < _RANDOM_COLUMNS + 1:
            return {}
        take = np.arange(0, n, max(1, n // _RANDOM_SAMPLE))[:_RANDOM_SAMPLE] if n > _RANDOM_SAMPLE else None
        cache: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}

        def column(c: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
            """(codes of the trimmed values, -1 where empty; numbers; the distinct values) on the rows judged."""
            if c not in cache:
                trimmed = pc.utf8_trim_whitespace(sample.column(c))
                distinct = [v for v in counters[c] if v]
                codes = _numpy(pc.fill_null(pc.index_in(trimmed, value_set=pa.array(distinct, pa.string())), -1))
                x = _numbers(sample.column(c), counters[c])
                for e in _edge_values(counters[c]):  # a column's own stand-ins are no evidence
                    x[x == e] = np.nan
                codes = codes.astype(np.int64)
                cache[c] = (codes, x, distinct) if take is None else (codes[take], x[take], distinct)
            return cache[c]

        kinds: dict[str, str | None] = {}

        def kind(c: str) -> str | None:
            """categorical (2 to _MAX_CATEGORIES values), numeric (more, 90% of the cells of its 200
            most frequent values numbers) or None (not compared)."""
            if c not in kinds:
                distinct = sum(1 for v in counters[c] if v)
                kinds[c] = None
                if 2 <= distinct <= _MAX_CATEGORIES:
                    kinds[c] = "categorical"
                elif distinct > _MAX_CATEGORIES:
                    top = [(v, k) for v, k in counters[c].most_common(201) if v][:200]
                    if sum(k for v, k in top if parse_number(v) is not None) >= 0.9 * sum(k for _, k in top):
                        kinds[c] = "numeric"
            return kinds[c]
        out: dict[str, list[Finding]] = {}
        for c in columns:
            if not self._on(c, "random"):
                continue
            known = {f.value for f in findings[c]}
            counts = Counter({v: k for v, k in counters[c].items() if v and v not in known})
            if len(counts) < 3:
                continue
            (v, k), (_, k_next) = counts.most_common(2)
            if k < _RANDOM_MIN_ROWS or k < _RANDOM_SPIKE * k_next:
                continue
            others = [o for o in columns if o != c]
            if len(others) > 4 * _RANDOM_MAX_COLUMNS:  # spread over the table, the same ones on every run
                others = [others[i] for i in np.linspace(0, len(others) - 1, 4 * _RANDOM_MAX_COLUMNS).round().astype(int)]
            others = [o for o in others if kind(o) is not None]
            if len(others) > _RANDOM_MAX_COLUMNS:
                others = [others[i] for i in np.linspace(0, len(others) - 1, _RANDOM_MAX_COLUMNS).round().astype(int)]
            codes, x, distinct = column(c)
            known_codes = [distinct.index(u) for u in known if u in distinct]
            filled = (codes >= 0) & ~np.isin(codes, known_codes)
            rows = codes == distinct.index(v)

            def gaps(group: np.ndarray, stop_num: float, stop_cat: float):
                """Per compared column, how far ``group`` lies from the column's other rows; stops at
                the first column beyond ``stop_num`` (IQR) or ``stop_cat`` (TV)."""
                found, over = [], False
                for o in others:
                    o_codes, o_x, _ = column(o)
                    if kind(o) == "numeric":
                        g = _median_gap(o_x, group, filled & ~group)
                        over = g is not None and g > stop_num
                    else:
                        g = _share_gap(o_codes, group, filled & ~group)
                        over = g is not None and g > stop_cat
                    if g is not None:
                        found.append((o, g))
                    if over:
                        break
                return found, over

            compared, moved = gaps(rows, _RANDOM_IQR, _RANDOM_TV)
            if moved or len(compared) < _RANDOM_COLUMNS:
                continue
            dependent = None
            for group in self._other_groups(codes, x, filled & ~rows, kind(c) == "categorical"):
                found, over = gaps(group, _DEPENDENT_IQR, _DEPENDENT_TV)
                if over:
                    dependent = found[-1][0]
                    break
            if dependent is None:
                continue
            out.setdefault(c, []).append(Finding(
                c, v, counters[c][v], "random",
                f"{v!r} occurs {k} times, {k / max(k_next, 1):.3g}x as often as the column's next value; its rows match "
                f"the column's other rows within chance on all {len(compared)} other columns compared "
                f"({', '.join(repr(o) for o, _ in compared[:5])}{', ...' if len(compared) > 5 else ''}), while the "
                f"column's other values differ from the table (on {dependent!r}): filled in at random rows, a "
                f"stand-in for 'unknown' (FAHES's random-DMV test)"))
        return out

    @staticmethod
    def _other_groups(codes: np.ndarray, numbers: np.ndarray, rows: np.ndarray, categorical: bool) -> list[np.ndarray]:
        """A column's other values as groups of rows: its ten most frequent categories of at
        least ``_RANDOM_MIN_ROWS`` rows, or the quartiles of its numbers."""
        if categorical:
            counts = np.bincount(codes[rows])
            top = [i for i in np.argsort(-counts, kind="stable")[:10] if counts[i] >= _RANDOM_MIN_ROWS]
            return [rows & (codes == code) for code in top]
        ok = rows & ~np.isnan(numbers)
        if ok.sum() < 4 * _RANDOM_MIN_ROWS:
            return []
        cuts = np.quantile(numbers[ok], (0.25, 0.5, 0.75))
        bins = np.digitize(np.where(ok, numbers, 0.0), cuts)
        return [g for b in range(4) if (g := ok & (bins == b)).sum() >= _RANDOM_MIN_ROWS]

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
        """The values that ``apply`` turns into nulls in this column (suspects and kept
        "not applicable" values stay)."""
        self._check_fitted()
        return self._replaced(column) | (self._not_applicable(column) if self._na_action(column) != "keep" else set())

    def _replaced(self, column: str) -> set[str]:
        """Values nulled as missing (imputed): missing findings that are not suspects, plus
        not-applicable ones where the schema says to impute them anyway."""
        out = {f.value for f in self.findings_.get(column, []) if f.kind == "missing" and not f.suspect}
        if self._na_action(column) == "impute":
            out |= self._not_applicable(column)
        return out

    def _not_applicable(self, column: str) -> set[str]:
        return {f.value for f in self.findings_.get(column, []) if f.kind == "not_applicable"}

    def _flagged_na(self, column: str) -> set[str]:
        """Values listed in ``_lf_not_applicable`` (nulled or kept, never imputed)."""
        return set() if self._na_action(column) == "impute" else self._not_applicable(column)

    def _na_action(self, column: str) -> str:
        rules = self._rules(column)
        return rules.not_applicable if rules is not None else "null"

    def suspects(self) -> list[Finding]:
        self._check_fitted()
        return [f for c in self.columns_ for f in self.findings_[c] if f.suspect]

    def rules_for(self, column: str) -> dict:
        """The schema fields that record this column's findings (for ``infer_schema``): the
        missing values found by a detector other than the token list. Suspects and structural
        "not applicable" values are not pinned: the detector finds them again on every run."""
        values = sorted(self._replaced(column) - self._token_values(column))
        return {"null_values": values} if values else {}

    def _token_values(self, column: str) -> set[str]:
        return {f.value for f in self.findings_.get(column, []) if f.detector == "token"}

    def null_mask(self, column: str, values: pa.ChunkedArray | pa.Array) -> pa.Array:
        """Where ``apply`` leaves a null in this column (blank cells included)."""
        self._check_fitted()
        return _null_mask_from_values(values, self.null_values(column), tokens=self._on(column, "token"),
                                      keep=self._pinned_values(column) | self._suspect_values(column))

    def _suspect_values(self, column: str) -> set[str]:
        return {f.value for f in self.findings_.get(column, []) if f.suspect}

    def _pinned_values(self, column: str) -> set[str]:
        rules = self._rules(column)
        return {v.strip() for v in rules.not_null_values} if rules else set()

    def apply(self, table: pa.Table) -> tuple[pa.Table, dict[str, int]]:
        """Replace disguised nulls (and blank cells) with real nulls.

        Returns the table, with a ``_lf_disguised`` list column naming the cells replaced as
        disguised nulls in each row and a ``_lf_not_applicable`` list column naming the cells
        found to be "not applicable" (nulled, or kept where the schema says so; never imputed),
        and the per-column count of the disguised-null replacements.
        """
        self._check_fitted()
        missing = [c for c in self.columns_ if c not in table.column_names]
        if missing:
            raise KeyError(f"the batch lacks column(s) {missing} that the policy was fitted on")
        counts: dict[str, int] = {}
        flags, na_flags = [], []
        arrays = {}
        for c in table.column_names:
            col = table.column(c)
            if c in (DISGUISED, NOT_APPLICABLE):
                continue
            if c not in self.columns_:
                arrays[c] = col
                continue
            if is_typed_number(col.type) and not self._needs_text(c, col):  # only its nulls are missing
                flags.append(np.zeros(table.num_rows, bool))
                na_flags.append(np.zeros(table.num_rows, bool))
                counts[c] = 0
                arrays[c] = col
                continue
            text = col.cast(pa.string()) if is_typed_number(col.type) else col
            trimmed = pc.utf8_trim_whitespace(text)
            blank = pc.fill_null(pc.equal(trimmed, ""), True)
            na_values = self._flagged_na(c)
            na = _in(trimmed, na_values)
            nulled = pc.and_not(self.null_mask(c, text), blank)
            disguised = pc.fill_null(pc.and_not(nulled, na), False)
            counts[c] = int(pc.sum(disguised).as_py() or 0)
            flags.append(_numpy(disguised))
            na_flags.append(_numpy(na))
            arrays[c] = pc.if_else(pc.or_(blank, nulled), pa.scalar(None, col.type), col)
        names = np.asarray(self.columns_, dtype=object)
        empty = np.zeros((table.num_rows, 0), bool)
        arrays[DISGUISED] = flags_to_lists(np.stack(flags, axis=1) if flags else empty, names)
        arrays[NOT_APPLICABLE] = flags_to_lists(np.stack(na_flags, axis=1) if na_flags else empty, names)
        return pa.table(arrays), counts

    def _needs_text(self, column: str, col) -> bool:
        """Whether a typed number column can hold a value this policy nulls or flags: a value
        it lists, or (null tokens on) a float's NaN, whose text is the token "nan". Otherwise
        its text (``as_text``) holds no blank, no token and no listed value, and only its
        nulls are missing: the same result without making the text."""
        if self.null_values(column) or self._flagged_na(column):
            return True
        return (self._on(column, "token") and pa.types.is_floating(col.type)
                and bool(pc.any(pc.is_nan(col)).as_py()))

    def not_applicable_counts(self, table: pa.Table) -> dict[str, int]:
        """Cells per column listed in an applied batch's ``_lf_not_applicable``."""
        if NOT_APPLICABLE not in table.column_names or table.num_rows == 0:
            return {}
        return list_value_counts(table.column(NOT_APPLICABLE))

    # ---------------------------------------------------------------------------- reporting
    def to_dict(self) -> dict:
        self._check_fitted()
        return {"rows_seen": self.rows_seen_, "columns": {c: [asdict(f) for f in fs] for c, fs in self.findings_.items()}}

    @classmethod
    def from_dict(cls, data: dict, *, schema=None) -> "NullPolicy":
        """A fitted policy from ``to_dict``'s output (findings written before ``kind``,
        ``share`` and ``suspect`` existed read as missing, replaced)."""
        policy = cls(schema=schema)
        policy.findings_ = {c: [Finding(**f) for f in fs] for c, fs in data["columns"].items()}
        policy.columns_ = list(data["columns"])
        policy.rows_seen_ = data.get("rows_seen", 0)
        return policy

    def report(self) -> str:
        self._check_fitted()
        lines = [f"{'column':<32} {'value':<12} {'count':>7} {'share':>6}  {'detector':<12} {'kind':<18} evidence"]
        for c in self.columns_:
            for f in self.findings_[c]:
                kind = f.kind + (" (suspect)" if f.suspect else "")
                lines.append(f"{c[:32]:<32} {f.value[:12]:<12} {f.count:>7} {f.share:>6.1%}  {f.detector:<12} {kind:<18} {f.evidence}")
        if len(lines) == 1:
            lines.append("(no disguised nulls found)")
        return "\n".join(lines)


def _numbers(values: pa.ChunkedArray, counts: Counter) -> np.ndarray:
    """The column as float64 (NaN where a cell is empty or not a number), parsed once per
    distinct value."""
    distinct = [v for v in counts if v]
    if not distinct:
        return np.full(len(values), np.nan)
    parsed = np.array(parse_number_array(distinct)[0] + [np.nan])
    index = pc.index_in(pc.utf8_trim_whitespace(values), value_set=pa.array(distinct, pa.string()))
    return parsed[_numpy(pc.fill_null(index, len(distinct))).astype(np.int64)]


def _edge_values(counts: Counter) -> set[float]:
    """A column's repeated sentinel-looking values at its minimum or maximum: left out when
    another column's rows are compared on it (they may be its own stand-ins)."""
    numbers = {v: x for v in counts if v and (x := parse_number(v)) is not None and not math.isnan(x)}
    if len(numbers) < 3:
        return set()
    lo, hi = min(numbers.values()), max(numbers.values())
    return {x for v, x in numbers.items() if x in (lo, hi) and counts[v] >= 2 and _is_sentinel(v, x)}


def _row_spread(rows: np.ndarray, column: str, numbers: dict[str, np.ndarray], edges: dict[str, set[float]]) -> float | None:
    """How far the rows ``rows`` sit from the others: the largest gap, in IQRs of the other
    rows, between their medians on any other numeric column, less what chance gives k random
    rows (``_MEDIAN_NOISE`` / sqrt(k)); None: no column to compare on."""
    worst = None
    for c, values in numbers.items():
        if c == column:
            continue
        keep = np.ones(len(values), dtype=bool)
        for e in edges[c]:
            keep &= values != e
        d = _median_gap(values, rows & keep, ~rows & keep, min_rows=_MIN_RANDOM_ROWS, min_distinct=3)
        if d is not None:
            worst = d if worst is None else max(worst, d)
    return worst


def _shapes(values: list[str]) -> list[str]:
    """Each value's character shape: each digit 9, each upper-case letter A, every other letter
    a, each white space one blank, every other character itself ("2009-10" -> "9999-99")."""
    arr = pa.array(values, pa.string())
    # upper-case letters go through a placeholder (an "A" would be a letter for the next rule)
    for pattern, to in ((r"\p{Nd}", "9"), (r"\p{Lu}", "\x00"), (r"\p{L}", "a"), (r"\s", " "), ("\x00", "A")):
        arr = pc.replace_substring_regex(arr, pattern=pattern, replacement=to)
    return arr.to_pylist()


def _runs(shape: str) -> str:
    """A shape with its runs of one class written once ("9999-99" -> "9-9"; "Aaa Aaaaaaaaaa" -> "Aa Aa")."""
    return re.sub(r"(.)\1+", r"\1", shape)


def _median_gap(values: np.ndarray, rows: np.ndarray, rest: np.ndarray, *, min_rows: int = _RANDOM_MIN_ROWS,
                min_distinct: int = 0) -> float | None:
    """How far the median of ``rows`` lies from that of ``rest``, in IQRs of ``rest``, less what
    chance gives that many random rows (``_MEDIAN_NOISE`` / sqrt(k)); None: fewer than
    ``min_rows`` numbers on either side, or fewer than ``min_distinct`` distinct in ``rest``."""
    ok = ~np.isnan(values)
    mine, other = values[rows & ok], values[rest & ok]
    if len(mine) < min_rows or len(other) < min_rows or (min_distinct and len(np.unique(other)) < min_distinct):
        return None
    q1, q3 = np.quantile(other, (0.25, 0.75))
    scale = float(q3 - q1) or float(np.std(other))
    if scale <= 0:
        return None
    return abs(float(np.median(mine)) - float(np.median(other))) / scale - _MEDIAN_NOISE / math.sqrt(len(mine))


def _share_gap(codes: np.ndarray, rows: np.ndarray, rest: np.ndarray) -> float | None:
    """How far the category shares of ``rows`` lie from those of ``rest`` (total variation;
    ``codes``: a category's number, -1 where empty), less what chance gives that many random
    rows (two standard errors); None: too few rows."""
    ok = codes >= 0
    mine, other = codes[rows & ok], codes[rest & ok]
    if len(mine) < _RANDOM_MIN_ROWS or len(other) < _RANDOM_MIN_ROWS:
        return None
    size = int(max(mine.max(), other.max())) + 1
    p = np.bincount(other, minlength=size) / len(other)
    q = np.bincount(mine, minlength=size) / len(mine)
    noise = float(np.sum(np.sqrt(p * (1 - p) / len(mine))))
    return 0.5 * float(np.abs(q - p).sum()) - noise


def _numpy(mask) -> np.ndarray:
    return np.asarray(mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask)


def _in(trimmed, values: set[str]):
    if not values:
        return pa.array(np.zeros(len(trimmed), dtype=bool))
    return pc.fill_null(pc.is_in(trimmed, value_set=pa.array(sorted(values), pa.string())), False)


def _zero_spike(counts: Counter, *, taken: set[str]) -> dict | None:
    """The shape ``_structural`` needs of a column of counts with a common, apart 0, or None."""
    numbers = {}
    text = 0
    for v, k in counts.items():
        if not v:
            continue
        x = parse_number(v)
        if x is None:
            text += 1
            if text > _MAX_NON_NUMERIC:
                return None
            continue
        if math.isnan(x) or math.isinf(x) or (x < 0 and v not in taken):
            return None
        numbers[v] = (x, k)
    zeros = {v for v, (x, _) in numbers.items() if x == 0}
    rest = [(x, k) for v, (x, k) in numbers.items() if x != 0 and v not in taken]
    n_rest = sum(k for _, k in rest)
    if not zeros or len(numbers) < _MIN_DISTINCT_NUMBERS or n_rest < 20:
        return None
    percent = all(v.endswith("%") for v in numbers)
    if not percent and any(x != round(x) for x, _ in rest):
        return None
    n_zero = sum(numbers[v][1] for v in zeros)
    share = n_zero / (n_zero + n_rest)
    median = _weighted_quantiles(rest, (0.5,))[0]
    near = sum(k for x, k in rest if 0 < x <= 2)
    gap_ratio = n_zero / max(near, 1)
    if not _NA_MIN_SHARE <= share <= _NA_MAX_SHARE or median < _NA_MIN_MEDIAN or gap_ratio < _NA_MIN_GAP_RATIO:
        return None
    # a 0 at the bottom of a bounded scale (a pixel's intensity, with its pile at 255) is the
    # scale's edge, not "does not apply": counts of things thin out towards their maximum
    if _piles_at_top(rest):
        return None
    return {"zeros": zeros, "share": share, "median": median, "gap_ratio": gap_ratio, "percent": percent}


def _piles_at_top(values: list[tuple[float, int]]) -> bool:
    """Whether (value, count) pairs pile up at their maximum: the top band of their range
    holds at least ``_PILE_RATIO`` times as many values as the median band (a flat spread:
    about 1; counts of pupils, thinning out towards the largest school: under 1)."""
    xs = np.array([x for x, _ in values], dtype=float)
    ks = np.array([k for _, k in values], dtype=float)
    lo, hi = float(xs.min()), float(xs.max())
    if hi <= lo:
        return False
    bins = np.minimum(((xs - lo) / (hi - lo) * _BANDS).astype(int), _BANDS - 1)
    per_band = np.bincount(bins, weights=ks, minlength=_BANDS)
    return per_band[-1] >= 2 and per_band[-1] >= _PILE_RATIO * max(float(np.median(per_band)), 1.0)


def _co_zero(a: np.ndarray, b: np.ndarray, both: np.ndarray) -> float:
    """How far one column's zeros fall on the other's beyond chance, on rows where both have a
    value: (c - p) / (1 - p), c the share of the smaller zero set inside the larger, p the
    larger set's share of the rows (what c would be if the two were independent). 1: one set
    of zero rows lies inside the other; 0: no more overlap than chance."""
    n = int(both.sum())
    if n == 0:
        return 0.0
    za, zb = a & both, b & both
    na, nb = int(za.sum()), int(zb.sum())
    if min(na, nb) == 0 or max(na, nb) == n:
        return 0.0
    contained = int((za & zb).sum()) / min(na, nb)
    p = max(na, nb) / n
    return (contained - p) / (1 - p)


def _trimmed(values: pa.ChunkedArray) -> list[str]:
    return ["" if v is None else v.strip() for v in values.to_pylist()]


def _trimmed_counts(values: pa.ChunkedArray) -> Counter:
    """How often each value occurs, trimmed (a null counts as ""), in the order of first
    appearance: ``Counter(_trimmed(values))`` counted by Arrow (the same trimming as ``apply``'s)."""
    counts = pc.value_counts(pc.fill_null(pc.utf8_trim_whitespace(values), ""))
    return Counter(dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())))


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
