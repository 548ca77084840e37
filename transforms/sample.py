"""The training sample: at most k rows drawn uniformly from the whole input, the same rows
whatever the partitioning, the engine or the number of workers.

Each row's key is a seeded hash of its ``_lf_row_id`` (splitmix64, a bijection on 64-bit
integers, so no two rows share a key); the sample is the k rows with the smallest keys (a
bottom-k sample: uniform without replacement). ``BottomK`` keeps them in one pass over batches
in any order, holding at most about 2k rows; two of them merge into the bottom k of both, so
each worker keeps its own and one process merges them (Spark's tasks and driver, a Beam
combine, or the local loop alone). Nothing ever holds the whole input.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from lakefill.models.config import TRAIN_ROWS
from lakefill.transforms.io import ROW_ID, Quarantined

__all__ = ["row_keys", "BottomK", "SampleInfo", "TRAIN_ROWS"]

_QUARANTINE_KEPT = 1_000  # unreadable records kept for the training message (the rest counted)

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def row_keys(row_ids, seed: int) -> np.ndarray:
    """Each row id's key under ``seed`` (uint64; distinct row ids, distinct keys)."""
    ids = np.asarray(row_ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        salt = _mix(np.array([np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + np.uint64(0x9E3779B97F4A7C15)],
                             dtype=np.uint64))[0]
        return _mix(ids + salt)


@dataclass
class SampleInfo:
    """What the sample was drawn from: recorded in the model's manifest and the run report."""
    train_rows: int  # the sample size asked for (k)
    rows: int  # rows in the sample (k, or every row of a smaller input)
    input_rows: int  # readable rows of the input
    unreadable_rows: int  # input records that could not be read as rows (quarantined by the reader)
    seed: int

    def to_dict(self) -> dict:
        return {"train_rows": self.train_rows, "rows": self.rows, "input_rows": self.input_rows,
                "unreadable_rows": self.unreadable_rows, "seed": self.seed}


@dataclass
class BottomK:
    """The k rows with the smallest keys of every batch added (any order, any split)."""

    k: int
    seed: int = 0
    rows_seen: int = 0
    unreadable: int = 0
    quarantined: list[Quarantined] = field(default_factory=list)
    _tables: list[pa.Table] = field(default_factory=list)
    _keys: list[np.ndarray] = field(default_factory=list)
    _held: int = 0
    _threshold: np.uint64 = _M64  # a row's key must be below it to matter (the k-th smallest once k are held)

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"the training sample needs at least one row, got train_rows={self.k}")

    def add_unreadable(self, quarantined) -> "BottomK":
        """Records a reader could not read as rows: counted (the first thousand kept for the message)."""
        quarantined = list(quarantined)
        self.unreadable += len(quarantined)
        room = _QUARANTINE_KEPT - len(self.quarantined)
        if room > 0:
            self.quarantined += quarantined[:room]
        return self

    def add(self, table: pa.Table, quarantined=()) -> "BottomK":
        """A batch of rows (with their ``_lf_row_id``) and the records its reader could not read."""
        self.add_unreadable(quarantined)
        n = table.num_rows
        if not n:
            return self
        self.rows_seen += n
        keys = row_keys(table.column(ROW_ID).to_numpy(zero_copy_only=False), self.seed)
        keep = keys < self._threshold
        if not keep.all():
            table, keys = table.filter(pa.array(keep)), keys[keep]
        if len(keys):
            self._tables.append(table)
            self._keys.append(keys)
            self._held += len(keys)
            if self._held >= 2 * self.k:
                self._compact()
        return self

    def merge(self, other: "BottomK") -> "BottomK":
        """Another worker's sample (same k and seed) folded into this one."""
        if (other.k, other.seed) != (self.k, self.seed):
            raise ValueError("only samples of the same size and seed merge")
        table, keys = other._result()
        self.rows_seen += other.rows_seen - table.num_rows  # add() counts the rows it is given again
        self.add_unreadable(other.quarantined)
        self.unreadable += other.unreadable - len(other.quarantined)
        if table.num_rows:
            self.add(table)
        return self

    def _compact(self) -> None:
        if not self._tables:
            return
        table = pa.concat_tables(self._tables, promote_options="permissive") if len(self._tables) > 1 else self._tables[0]
        keys = np.concatenate(self._keys)
        if len(keys) > self.k:
            pick = np.argpartition(keys, self.k - 1)[: self.k]
            table, keys = table.take(pa.array(pick)), keys[pick]
        if len(keys) >= self.k:  # full: a later row enters only below the largest key kept
            self._threshold = np.uint64(keys.max())
        self._tables, self._keys, self._held = [table], [keys], len(keys)

    def _result(self) -> tuple[pa.Table, np.ndarray]:
        self._compact()
        if not self._tables:
            return pa.table({ROW_ID: pa.array([], pa.int64())}), np.zeros(0, dtype=np.uint64)
        return self._tables[0], self._keys[0]

    def to_bytes(self) -> bytes:
        """This partial sample as Arrow IPC (its rows; its counts and kept unreadable records in the
        schema's metadata): what a Spark task sends the driver. Data only, never code."""
        table, _ = self._result()
        meta = {"rows_seen": str(self.rows_seen), "unreadable": str(self.unreadable),
                "quarantined": json.dumps([dataclasses.astuple(q) for q in self.quarantined])}
        table = table.replace_schema_metadata(meta)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()

    @classmethod
    def from_bytes(cls, data: bytes, k: int, seed: int = 0) -> "BottomK":
        """A partial sample from ``to_bytes`` (the same k and seed), ready to ``merge``."""
        table = pa.ipc.open_stream(data).read_all()
        meta = {key.decode(): value.decode() for key, value in (table.schema.metadata or {}).items()}
        out = cls(k, seed, rows_seen=int(meta["rows_seen"]), unreadable=int(meta["unreadable"]),
                  quarantined=[Quarantined(*q) for q in json.loads(meta["quarantined"])])
        table = table.replace_schema_metadata(None)
        if table.num_rows:
            keys = row_keys(table.column(ROW_ID).to_numpy(zero_copy_only=False), seed)
            out._tables, out._keys, out._held = [table], [keys], len(keys)
            if len(keys) >= k:
                out._threshold = np.uint64(keys.max())
        return out

    def table(self) -> pa.Table:
        """The sample, in row-id order (the same table whatever order the batches came in)."""
        table, _ = self._result()
        return table.take(pa.array(np.argsort(table.column(ROW_ID).to_numpy(zero_copy_only=False), kind="stable")))

    def info(self) -> SampleInfo:
        table, _ = self._result()
        return SampleInfo(self.k, table.num_rows, self.rows_seen, self.unreadable, self.seed)


def read_sample(source, *, train_rows: int = TRAIN_ROWS, seed: int = 0, csv_options=None, options: dict | None = None,
                batch_rows: int = 50_000, log=None):
    """The input's training sample in one streaming pass in this process (the local engine's
    sampler; at most about ``2 * train_rows + batch_rows`` rows held at once). Returns
    (``RawRead`` of the sample, ``SampleInfo``)."""
    import time

    from lakefill.transforms.io import RawRead, iter_raw

    t0 = time.perf_counter()
    sample = BottomK(train_rows, seed)
    dialect, path = None, str(source)
    for chunk in iter_raw(source, options=options, batch_rows=batch_rows, csv_options=csv_options):
        dialect = dialect or chunk.dialect
        sample.add(chunk.table, chunk.quarantined)
    info = sample.info()
    if log is not None:
        log(f"training sample: {info.rows:,} of {info.input_rows:,} rows (seed {seed}), drawn in "
            f"{time.perf_counter() - t0:.2f} s")
    return RawRead(path, sample.table(), list(sample.quarantined), dialect), info
