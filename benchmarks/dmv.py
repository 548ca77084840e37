"""Disguised-null detection scored on the FAHES benchmark tables (../shared/data/dmv), and its
false findings on clean tables.

    python -m benchmarks.dmv [--data ../shared/data/dmv] [--tabular ../shared/data/tabular]
                             [--mnist ../shared/data/mnist/mnist_test10k.npz] [--json OUT.json]

Precision and recall over (table, column, value) triples against ground_truth.txt, per table
and overall. Column names and values are compared after trimming white space. Empty cells are
plain nulls and are never reported as disguised ones.

The clean-table figure: every finding on tables known to hold no disguised null in the columns
checked is a false finding: the tabular tables (except the encodings their provenance names,
``KNOWN_ENCODINGS``), MNIST's test images as a 784-column table of pixel values, and the
columns of the DMV tables that carry no label. Reported as false findings, as suspects among
them (reported, kept) and as the cells a run would have replaced (nulled: the findings that
are not suspects).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lakefill.transforms.detect import NullPolicy
from lakefill.transforms.io import read_raw

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dmv"
DEFAULT_TABULAR = DEFAULT_DATA.parent / "tabular"
DEFAULT_MNIST = DEFAULT_DATA.parent / "mnist" / "mnist_test10k.npz"
# what ../shared/data/PROVENANCE.md names as a table's own encodings of unknown / not applicable
KNOWN_ENCODINGS = {("bank", c, "unknown") for c in ("job", "education", "contact", "poutcome")} | {("bank", "pdays", "-1")}


def load_truth(path: Path) -> set[tuple[str, str, str]]:
    truth = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            table, column, value = line.split("::")
            truth.add((table.strip(), column.strip(), value.strip()))
    return truth


def detect_findings(path: Path) -> dict[tuple[str, str, str], dict]:
    """Every finding of the table, keyed by (table, column, value), with its detector and kind."""
    return _detect(path)[0]


def _detect(path: Path) -> tuple[dict[tuple[str, str, str], dict], list[str]]:
    raw = read_raw(path)
    policy = NullPolicy().fit(raw.table)
    findings = {(path.stem, c.strip(), f.value): {"detector": f.detector, "kind": f.kind, "share": f.share,
                                                   "count": f.count, "suspect": f.suspect}
                for c, fs in policy.findings_.items() for f in fs}
    return findings, [c.strip() for c in raw.table.column_names if not c.startswith("_lf_")]


def detect_table(path: Path) -> set[tuple[str, str, str]]:
    return set(detect_findings(path))


def _findings_of(name: str, table) -> dict[tuple[str, str, str], dict]:
    policy = NullPolicy().fit(table)
    return {(name, c.strip(), f.value): {"detector": f.detector, "kind": f.kind, "count": f.count, "suspect": f.suspect}
            for c, fs in policy.findings_.items() for f in fs}


def mnist_table(path: Path):
    """MNIST's test images as a table: one text column of pixel values (0-255) per pixel."""
    import numpy as np
    import pyarrow as pa

    pixels = np.load(path)["x_test"].reshape(-1, 784)
    return pa.table({f"pixel{i}": pa.array(pixels[:, i].astype(str)) for i in range(784)})


def clean_tables(tabular: Path | None, mnist: Path | None, dmv_findings: dict, dmv_columns: set, truth: set) -> dict:
    """False findings on tables (and columns) that hold no disguised null."""
    per: dict[str, dict] = {}

    def add(name: str, findings: dict, *, columns: int) -> None:
        false = {k: f for k, f in findings.items() if k not in KNOWN_ENCODINGS}
        per[name] = {"columns": columns, "false_findings": len(false),
                     "suspects": sum(f["suspect"] for f in false.values()),
                     "replaced_cells": sum(f["count"] for f in false.values() if not f["suspect"]),
                     "findings": {f"{c}::{v}": f for (_, c, v), f in sorted(false.items())}}

    if tabular is not None and tabular.is_dir():
        for path in sorted(tabular.glob("*.csv")):
            findings, columns = _detect(path)
            add(path.stem, findings, columns=len(columns))
    if mnist is not None and mnist.is_file():
        table = mnist_table(mnist)
        add("mnist", _findings_of("mnist", table), columns=table.num_columns)
    labelled = {(t, c) for t, c, _ in truth}
    by_table: dict[str, dict] = {}
    for key, f in dmv_findings.items():
        if (key[0], key[1]) not in labelled:
            by_table.setdefault(key[0], {})[key] = f
    add("dmv unlabelled columns", {k: f for fs in by_table.values() for k, f in fs.items()},
        columns=len(dmv_columns - labelled))
    total = {k: sum(m[k] for m in per.values()) for k in ("false_findings", "suspects", "replaced_cells")}
    return {**total, "tables": per}


def _prf(found: set, truth: set) -> dict:
    tp = len(found & truth)
    p = tp / len(found) if found else 1.0
    r = tp / len(truth) if truth else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"found": len(found), "truth": len(truth), "true_positives": tp, "precision": p, "recall": r, "f1": f1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dmv", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--tabular", type=Path, default=DEFAULT_TABULAR, help="folder of clean tables (CSV)")
    ap.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="MNIST test images (.npz), checked as a table")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    truth = load_truth(args.data / "ground_truth.txt")
    per_table, all_found = {}, set()
    t0 = time.perf_counter()
    kinds: dict[str, int] = {}
    every: dict = {}
    dmv_columns: set[tuple[str, str]] = set()
    for path in sorted((args.data / "tables").glob("*.csv")):
        findings, columns = _detect(path)
        every.update(findings)
        dmv_columns |= {(path.stem, c) for c in columns}
        found = set(findings)
        all_found |= found
        for f in findings.values():
            key = f["kind"] + (" (suspect)" if f["suspect"] else "")
            kinds[key] = kinds.get(key, 0) + 1
        per_table[path.stem] = _prf(found, {t for t in truth if t[0] == path.stem})
        per_table[path.stem]["false_positives"] = sorted(f"{c}::{v}" for _, c, v in found - truth)
        per_table[path.stem]["false_negatives"] = sorted(f"{c}::{v}" for t, c, v in truth - found if t == path.stem)
        per_table[path.stem]["findings"] = {f"{c}::{v}": f for (_, c, v), f in sorted(findings.items())}
    overall = _prf(all_found, truth)
    overall["findings_by_kind"] = dict(sorted(kinds.items()))
    overall["seconds"] = round(time.perf_counter() - t0, 3)
    print(f"{'table':<24} {'found':>5} {'truth':>5} {'prec':>6} {'recall':>6} {'F1':>6}")
    for name, m in per_table.items():
        print(f"{name:<24} {m['found']:>5} {m['truth']:>5} {m['precision']:>6.3f} {m['recall']:>6.3f} {m['f1']:>6.3f}")
    print(f"{'overall':<24} {overall['found']:>5} {overall['truth']:>5} {overall['precision']:>6.3f} {overall['recall']:>6.3f} {overall['f1']:>6.3f}")
    print("findings by kind: " + ", ".join(f"{k} {n}" for k, n in overall["findings_by_kind"].items()))
    for name, m in per_table.items():
        for fp in m["false_positives"]:
            print(f"  false positive  {name}::{fp}")
        for fn in m["false_negatives"]:
            print(f"  missed          {name}::{fn}")
    t1 = time.perf_counter()
    clean = clean_tables(args.tabular, args.mnist, every, dmv_columns, truth)
    clean["seconds"] = round(time.perf_counter() - t1, 3)
    print(f"\nclean tables: {clean['false_findings']} false findings ({clean['suspects']} suspects, kept), "
          f"{clean['replaced_cells']} cells a run would replace")
    print(f"{'clean table':<24} {'columns':>7} {'false':>5} {'suspect':>7} {'cells':>7}")
    for name, m in clean["tables"].items():
        print(f"{name:<24} {m['columns']:>7} {m['false_findings']:>5} {m['suspects']:>7} {m['replaced_cells']:>7}")
        for key, f in m["findings"].items():
            print(f"  false finding   {name}::{key} ({f['detector']}{', suspect' if f['suspect'] else ''})")
    if args.json:
        args.json.write_text(json.dumps({"overall": overall, "tables": per_table, "clean": clean}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
