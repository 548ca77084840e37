"""Donors: the training rows a row to fill is a copy of (a duplicate record with other holes).

Raw tables hold duplicate records: the same reading ingested twice, the same entity from two
sources, each copy with its own missing cells. A network that learned the table fills a hole
with a conditional mean; the row's twin, where it has that cell, knows the value. The
``DonorIndex`` keeps the training rows (encoded: a numeric column's robust-scaled value, a
category's index) and, for a row to fill, finds the training rows that agree exactly with every
one of its given cells that they also have, on enough evidence: each agreeing cell counts
-log2 of its value's frequency in the training column (a common value says little, a rare
one much), at most ``MAX_CELL_BITS`` per cell, and a donor needs ``MIN_BITS`` in all (so at
least two agreeing cells). A hole is then the donors' mean (numbers) or their vote (categories).

The bits assume independent columns; correlated columns (a table of mostly-zero counts) agree
more often than that, so evidence comes in bands (``BANDS``: 20-30, 30-40, 40+ bits) and a
row uses only its donors of the highest band it has. The model blends the donors' fill with the
networks' by one weight per band, fitted on the held-out rows' hidden cells like the mixture's
weights (a row is never its own donor there); all weights 0 leave the index out of the model.
Rows with no donor keep the networks' fill unchanged.

Candidates come from an inverted index, vectorised (no loop per row): per column the donors
sorted by value; a row looks up its ``KEYS`` rarest given values (each shared by at most
``MAX_CANDIDATES`` donors), and each candidate is then checked on all its cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["DonorIndex", "DonorFill", "column_values", "MIN_BITS", "MAX_CELL_BITS", "MAX_ROWS", "BANDS"]

MIN_BITS = 20.0  # evidence a donor needs: about one chance in a million that unrelated rows agree
BANDS = (30.0, 40.0)  # further evidence bands' lower edges: each band has its own blend weight
MAX_CELL_BITS = 10.0  # no single cell (an id-like value) makes a match alone
KEYS = 3  # lookups per row: its rarest given values
MAX_CANDIDATES = 64  # a value shared by more donors is no key
MAX_ROWS = 200_000  # training rows kept as donors (a seeded draw beyond that)
_CHUNK = 1 << 16  # candidate pairs checked at once
# rows looked up at once: a row's donors do not depend on the other rows, and past a few hundred
# thousand rows the lookup's arrays make it several times slower per row (400,000 letter rows at
# once: 1.13 s; in parts of 200,000: 0.29 s; of 32,768: 0.28 s)
_ROWS = 1 << 15


def column_values(values: np.ndarray, col_slices: list[tuple[int, int]], n_num: int) -> np.ndarray:
    """(n, n_cols) float32 from the encoded input layout: a numeric column's scaled value, a
    categorical column's slot index (meaningful where the cell is given)."""
    out = np.zeros((len(values), len(col_slices)), dtype=np.float32)
    for j, (a, b) in enumerate(col_slices):
        out[:, j] = values[:, a] if j < n_num else np.argmax(values[:, a:b], axis=1)
    return out


@dataclass
class DonorFill:
    num: np.ndarray  # (n, n_num) donors' mean scaled value (0 where none)
    num_has: np.ndarray  # (n, n_num) bool: a donor had the cell
    cat_probs: list[np.ndarray]  # per categorical column (n, k): donors' vote shares
    cat_has: np.ndarray  # (n, n_cat) bool
    band: np.ndarray  # (n,) the evidence band of the row's donors (0 = lowest), -1: none


class DonorIndex(nn.Module):
    """The training rows as donors; the fitted blend ``weight`` and the donors' held-out error
    (min-max scale, the unit of ``Prediction.cell_error``), one per evidence band, are saved
    with them."""

    def __init__(self, n_rows: int, col_slices: list[tuple[int, int]], n_num: int, cat_sizes: list[int]):
        super().__init__()
        self.col_slices, self.n_num, self.cat_sizes = [tuple(s) for s in col_slices], n_num, list(cat_sizes)
        self.register_buffer("values", torch.zeros(n_rows, len(col_slices)))
        self.register_buffer("observed", torch.zeros(n_rows, len(col_slices), dtype=torch.uint8))
        self.register_buffer("weight", torch.zeros(len(BANDS) + 1))
        self.register_buffer("error", torch.zeros(len(BANDS) + 1))
        self._lookup_state = None

    @classmethod
    def build(cls, values: np.ndarray, observed: np.ndarray, *, col_slices: list[tuple[int, int]], n_num: int,
              cat_sizes: list[int]) -> "DonorIndex":
        """From the encoded training rows (``TableCodec.encode``'s values and observed)."""
        index = cls(len(values), col_slices, n_num, cat_sizes)
        index.values.copy_(torch.from_numpy(column_values(values, col_slices, n_num)))
        index.observed.copy_(torch.from_numpy(observed.astype(np.uint8)))
        return index

    @property
    def n_rows(self) -> int:
        return int(self.values.shape[0])

    def _state(self):
        if self._lookup_state is None:
            V = self.values.detach().cpu().numpy()
            O = self.observed.detach().cpu().numpy().astype(bool)
            columns, sorted_ids, offset = [], [], 0
            for j in range(V.shape[1]):
                ids = np.nonzero(O[:, j])[0]
                order = np.argsort(V[ids, j], kind="stable")
                sorted_ids.append(ids[order])
                # per distinct value: where its donors start in the flat order, how many, its bits
                uniq, first, counts = np.unique(V[ids[order], j], return_index=True, return_counts=True)
                bits = np.minimum(-np.log2(counts / max(len(ids), 1)), MAX_CELL_BITS)
                columns.append((uniq, first + offset, counts, bits))
                offset += len(ids)
            flat_ids = np.concatenate(sorted_ids) if sorted_ids else np.zeros(0, np.int64)
            self._lookup_state = (V, O, columns, flat_ids)
        return self._lookup_state

    def _load_from_state_dict(self, *args, **kwargs):  # new rows: the lookup tables are rebuilt
        self._lookup_state = None
        return super()._load_from_state_dict(*args, **kwargs)

    def lookup(self, values: np.ndarray, given: np.ndarray, *, exclude: np.ndarray | None = None) -> DonorFill:
        """Donors for each row's cells that are not ``given``. ``values``: the encoded input
        layout; ``exclude``: per row, a donor index the row may not use (itself), or -1."""
        if len(given) > _ROWS:
            parts = [self.lookup(values[s:s + _ROWS], given[s:s + _ROWS],
                                 exclude=None if exclude is None else np.asarray(exclude)[s:s + _ROWS])
                     for s in range(0, len(given), _ROWS)]
            joined = {f: np.concatenate([getattr(p, f) for p in parts]) for f in ("num", "num_has", "cat_has", "band")}
            return DonorFill(**joined, cat_probs=[np.concatenate([p.cat_probs[k] for p in parts])
                                                  for k in range(len(self.cat_sizes))])
        V, O, columns, flat_ids = self._state()
        n, c = given.shape
        Q = column_values(values, self.col_slices, self.n_num)
        G = np.asarray(given, dtype=bool)
        # how many donors share each given value, where they start in the flat order, its bits
        count = np.zeros((c, n), dtype=np.int64)  # column by column: contiguous
        start = np.zeros((c, n), dtype=np.int64)
        bits = np.zeros((c, n))
        QT, GT = np.ascontiguousarray(Q.T), np.ascontiguousarray(G.T)
        for j, (uniq, first, counts, value_bits) in enumerate(columns):
            if not len(uniq):
                continue
            pos = np.minimum(np.searchsorted(uniq, QT[j]), len(uniq) - 1)
            hit = GT[j] & (uniq[pos] == QT[j])
            count[j] = counts[pos] * hit
            start[j] = first[pos]
            bits[j] = value_bits[pos] * hit
        count, start, bits = count.T, start.T, bits.T
        # candidate pairs from each row's rarest given values
        rank = np.where((count > 0) & (count <= MAX_CANDIDATES), count, np.iinfo(np.int64).max)
        keys = np.argsort(rank, axis=1, kind="stable")[:, :KEYS]
        rows = np.repeat(np.arange(n), keys.shape[1])
        cols = keys.ravel()
        ok = rank[rows, cols] <= MAX_CANDIDATES
        rows, cols = rows[ok], cols[ok]
        k = count[rows, cols]
        pair_row = np.repeat(rows, k)
        step = np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)
        pair_donor = flat_ids[np.repeat(start[rows, cols], k) + step]
        pair = np.sort(pair_row.astype(np.int64) * max(self.n_rows, 1) + pair_donor)
        pair = pair[np.concatenate([[True], pair[1:] != pair[:-1]])] if len(pair) else pair
        pair_row, pair_donor = pair // max(self.n_rows, 1), pair % max(self.n_rows, 1)
        if exclude is not None:
            keep = pair_donor != np.asarray(exclude)[pair_row]
            pair_row, pair_donor = pair_row[keep], pair_donor[keep]
        # check every candidate on all the cells both have; keep those with enough evidence
        acc_row, acc_donor, acc_band = [], [], []
        for s in range(0, len(pair_row), _CHUNK):
            r, d = pair_row[s:s + _CHUNK], pair_donor[s:s + _CHUNK]
            both = O[d] & G[r]
            agree = np.all(~both | (V[d] == Q[r]), axis=1)
            evidence = (bits[r] * both).sum(axis=1)
            # a donor counts only if it has a cell the row lacks (a row is its own perfect match)
            good = agree & (evidence >= MIN_BITS) & np.any(O[d] & ~G[r], axis=1)
            acc_row.append(r[good])
            acc_donor.append(d[good])
            acc_band.append(np.searchsorted(BANDS, evidence[good], side="right"))
        r = np.concatenate(acc_row) if acc_row else np.zeros(0, np.int64)
        d = np.concatenate(acc_donor) if acc_donor else np.zeros(0, np.int64)
        b = np.concatenate(acc_band) if acc_band else np.zeros(0, np.int64)
        band = np.full(n, -1, dtype=np.int64)
        np.maximum.at(band, r, b)
        top = b == band[r]  # a row uses only its donors of its highest band
        r, d = r[top], d[top]
        gives = O[d] & ~G[r]  # the donor has a cell the row lacks
        n_num = self.n_num
        cell = (r[:, None] * c + np.arange(c))[gives]
        total = np.bincount(cell, weights=V[d][gives], minlength=n * c).reshape(n, c)
        hits = np.bincount(cell, minlength=n * c).reshape(n, c)
        num_has = hits[:, :n_num] > 0
        num = np.where(num_has, total[:, :n_num] / np.maximum(hits[:, :n_num], 1), 0.0).astype(np.float32)
        cat_probs = []
        for kk, size in enumerate(self.cat_sizes):
            j = n_num + kk
            votes = np.zeros((n, size))
            g = gives[:, j] & (V[d, j] < size)  # a donor's unknown category casts no vote
            np.add.at(votes, (r[g], V[d[g], j].astype(np.int64)), 1.0)
            cat_probs.append(votes / np.maximum(votes.sum(axis=1, keepdims=True), 1))
        cat_has = np.stack([p.sum(axis=1) > 0 for p in cat_probs], axis=1) if cat_probs else np.zeros((n, 0), bool)
        return DonorFill(num, num_has, cat_probs, cat_has, band)

    def row_weights(self, fill: DonorFill) -> np.ndarray:
        """(n, 1) each row's blend weight (its band's; 0 without donors)."""
        return _per_row(self.weight, fill)

    def row_errors(self, fill: DonorFill) -> np.ndarray:
        """(n, 1) each row's donor error (its band's held-out error; 0 without donors)."""
        return _per_row(self.error, fill)


def _per_row(per_band: torch.Tensor, fill: DonorFill) -> np.ndarray:
    values = per_band.detach().cpu().numpy().astype(np.float64)
    return np.where(fill.band >= 0, values[np.maximum(fill.band, 0)], 0.0)[:, None]
