"""Disguised-null detection scored on the FAHES benchmark tables (../shared/data/dmv).

    python -m benchmarks.dmv [--data ../shared/data/dmv] [--json OUT.json]

Precision and recall over (table, column, value) triples against ground_truth.txt, per table
and overall. Column names and values are compared after trimming white space. Empty cells are
plain nulls and are never reported as disguised ones.
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


def load_truth(path: Path) -> set[tuple[str, str, str]]:
    truth = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            table, column, value = line.split("::")
            truth.add((table.strip(), column.strip(), value.strip()))
    return truth


def detect_findings(path: Path) -> dict[tuple[str, str, str], dict]:
    """Every finding of the table, keyed by (table, column, value), with its detector and kind."""
    raw = read_raw(path)
    policy = NullPolicy().fit(raw.table)
    return {(path.stem, c.strip(), f.value): {"detector": f.detector, "kind": f.kind, "share": f.share,
                                               "suspect": f.suspect}
            for c, fs in policy.findings_.items() for f in fs}


def detect_table(path: Path) -> set[tuple[str, str, str]]:
    return set(detect_findings(path))


def _prf(found: set, truth: set) -> dict:
    tp = len(found & truth)
    p = tp / len(found) if found else 1.0
    r = tp / len(truth) if truth else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"found": len(found), "truth": len(truth), "true_positives": tp, "precision": p, "recall": r, "f1": f1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dmv", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    truth = load_truth(args.data / "ground_truth.txt")
    per_table, all_found = {}, set()
    t0 = time.perf_counter()
    kinds: dict[str, int] = {}
    for path in sorted((args.data / "tables").glob("*.csv")):
        findings = detect_findings(path)
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
    if args.json:
        args.json.write_text(json.dumps({"overall": overall, "tables": per_table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
