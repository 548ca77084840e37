"""Incremental input: a run takes only the files that no committed run of its output took.

A run of a job with ``incremental: true`` lists its input (a folder or a glob: one listing,
whose sizes and modification times come with it), reads what earlier runs took, and reads
only the new files, in URI order. What a run takes is recorded in one place, inside its table:
``TABLE/_lakefill/files/<run_id>.json`` (Delta readers skip ``_`` folders), written before the
run's work and counted only once the run's commit is in the table or its quarantine (the
run id's Delta app transaction): a killed run's record counts for nothing, and its re-run takes
the same files again. Two runs that start at once both plan the same files; each commit
carries the files counter (a Delta app transaction, ``FILES_APP``) at the value it planned
from plus one, so Delta's conflict check lets one of them commit and refuses the other
(``IncrementalConflict``: its parts are removed, and a re-run takes what is left).

A file taken before whose size or modification time has changed since is never taken
silently: ``changed_files`` says whether the run is refused (``error``), takes it again
(``reprocess``) or leaves it (``skip``); the run report lists it either way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

import pyarrow.fs as pafs
from deltalake import DeltaTable

from lakefill.errors import ConfigError, InputError
from lakefill.transforms.storage import Location, as_location

__all__ = ["InputFile", "IngestPlan", "plan_files", "record_files", "FILES_APP", "RECORDS", "IncrementalConflict",
           "taken_files", "list_files", "planned_counter", "files_counter"]

RECORDS = "_lakefill/files"  # under the table folder: one record per run
FILES_APP = "lakefill-files"  # the Delta app transaction counting incremental commits
ChangedFiles = Literal["error", "reprocess", "skip"]


class IncrementalConflict(ConfigError):
    """Another run committed files of this run's input after this run planned them."""


@dataclass(frozen=True)
class InputFile:
    uri: str
    size: int
    modified_ns: int

    def same(self, other: "InputFile") -> bool:
        return self.size == other.size and self.modified_ns == other.modified_ns


@dataclass
class IngestPlan:
    """What an incremental run takes: the new ``files`` (and the ``changed`` ones it takes
    again), the ``skipped`` changed ones, how many files the input lists and earlier runs
    took, and the files counter the plan was made at (``counter``: None before any such commit)."""
    files: list[InputFile]
    listed: int
    taken_before: int
    changed: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    counter: int | None = None

    def to_dict(self) -> dict:
        return {"files": [f.uri for f in self.files], "listed": self.listed, "taken_before": self.taken_before,
                "changed": self.changed, "skipped": self.skipped, "files_counter": self.counter}


def list_files(source: "str | Location", options: dict | None = None) -> list[InputFile]:
    """The data files of a folder or a glob, with their sizes and modification times, from one listing."""
    from lakefill.transforms.io import is_data_file

    loc = as_location(source, options)
    if not any(c in loc.uri for c in "*?["):
        info = loc.info()
        if info.type == pafs.FileType.File:
            raise ConfigError(f"incremental: true needs an input folder or glob, not the single file {loc}: "
                              f"a daily job reads the folder its files land in")
        if info.type == pafs.FileType.NotFound and loc.is_local:
            raise InputError(f"input {loc} does not exist")
    out = [InputFile(f.uri, int(i.size), int(i.mtime_ns or 0)) for f, i in loc.listing() if is_data_file(f)]
    if not out:
        raise InputError(f"input {loc} holds no CSV, JSON Lines or Parquet file")
    return out


def _tables(out: Location) -> list[DeltaTable]:
    """The output's table and quarantine, those that exist."""
    from lakefill.transforms.lake import open_table

    return [t for t in (open_table(out / "table"), open_table(out / "quarantine")) if t is not None]


def _committed(tables: list[DeltaTable], run_id: str) -> bool:
    """Whether the run's commit is in the table or its quarantine (its Delta app transaction)."""
    from lakefill.transforms.lake import APP_ID_PREFIX

    return any(t.transaction_version(APP_ID_PREFIX + run_id) is not None for t in tables)


def planned_counter(output: "str | Location", run_id: str) -> int | None:
    """The files counter this run's plan was made at (its record's)."""
    rec = as_location(output) / "table" / RECORDS / f"{run_id}.json"
    return json.loads(rec.read_text())["files_counter"]


def taken_files(output: "str | Location", *, exclude_run: str | None = None) -> dict[str, tuple[str, InputFile]]:
    """The files that committed runs of this output took: uri -> (run id, the file as taken).
    A record counts only where its run id is committed to the table or its quarantine."""
    out = as_location(output)
    records = out / "table" / RECORDS
    tables = _tables(out)
    taken: dict[str, tuple[str, InputFile]] = {}
    for rec in sorted(records.listdir(), key=lambda r: r.name):
        if not rec.name.endswith(".json"):
            continue
        data = json.loads(rec.read_text())
        run_id = data["run_id"]
        if run_id == exclude_run:
            continue
        if not _committed(tables, run_id):
            continue  # planned, never committed (a killed run): its files were not taken
        for f in data["files"]:
            taken[f["uri"]] = (run_id, InputFile(**f))
    return taken


def files_counter(output: "str | Location") -> int | None:
    """The files counter of the output's table (None: no incremental commit yet)."""
    from lakefill.transforms.lake import open_table

    dt = open_table(as_location(output) / "table")
    return None if dt is None else dt.transaction_version(FILES_APP)


def plan_files(source: "str | Location", output: "str | Location", *, run_id: str,
               changed_files: ChangedFiles = "error", options: dict | None = None) -> IngestPlan:
    """The files this run takes: listed in ``source``, not taken by a committed run of
    ``output`` (a re-run of the same run id plans afresh), changed ones by ``changed_files``."""
    out = as_location(output)
    own = out / "table" / RECORDS / f"{run_id}.json"
    if own.exists() and _committed(_tables(out), run_id):  # a re-run of a committed run: its files, nothing new
        data = json.loads(own.read_text())
        return IngestPlan([InputFile(**f) for f in data["files"]], len(data["files"]), 0, [], [], data["files_counter"])
    counter = files_counter(output)
    listed = list_files(source, options)
    taken = taken_files(output, exclude_run=run_id)
    new, changed, skipped = [], [], []
    for f in listed:
        before = taken.get(f.uri)
        if before is None:
            new.append(f)
            continue
        if before[1].same(f):
            continue
        what = {"uri": f.uri, "run_id": before[0], "size_before": before[1].size, "size": f.size,
                "modified_ns_before": before[1].modified_ns, "modified_ns": f.modified_ns}
        if changed_files == "error":
            raise ConfigError(f"input file {f.uri} changed after run {before[0]!r} took it (size {before[1].size} -> "
                              f"{f.size} bytes, modified {before[1].modified_ns} -> {f.modified_ns} ns); set "
                              f"changed_files: reprocess to take it again or skip to leave it")
        if changed_files == "reprocess":
            new.append(f)
            changed.append(what)
        else:
            skipped.append(what)
    return IngestPlan(new, len(listed), len(taken), changed, skipped, counter)


def record_files(output: "str | Location", run_id: str, plan: IngestPlan) -> Location:
    """Write the run's record (before its work; it counts once the run is committed)."""
    rec = as_location(output) / "table" / RECORDS / f"{run_id}.json"
    body = {"run_id": run_id, "files": [asdict(f) for f in plan.files], "files_counter": plan.counter}
    return rec.write_text(json.dumps(body, indent=1))
