"""``lakefill detect``: the disguised nulls of a file (protocol C's JSON with ``--json``)."""

from __future__ import annotations

import json
from pathlib import Path

from lakefill.pipelines.commands._common import add_parser, csv_options


def register(sub) -> None:
    p = add_parser(sub, "detect", help="find disguised nulls in a CSV/Parquet file", csv=True)
    p.add_argument("path", help="the table: CSV, Parquet or JSON Lines")
    p.add_argument("--json", help="write findings as JSON (docs/benchmarks.md, protocol C)")
    p.add_argument("--schema", help="schema.yaml with pinned values / detectors switched off")
    p.add_argument("--sample-rows", type=int, default=200_000, help="rows the detectors look at (from the top of the file)")
    p.set_defaults(func=run)


def run(args) -> int:
    from lakefill.transforms.detect import NullPolicy
    from lakefill.transforms.io import read_raw
    from lakefill.schema import load_schema

    schema = load_schema(args.schema) if args.schema else None
    raw = read_raw(args.path, csv_options=csv_options(args))
    policy = NullPolicy(schema=schema, sample_rows=args.sample_rows).fit(raw.table)
    print(f"{args.path}: {raw.table.num_rows} rows, {raw.table.num_columns - 1} columns"
          + (f", {len(raw.quarantined)} unreadable rows" if raw.quarantined else ""))
    print(policy.report())
    if args.json:
        out = {"table": Path(args.path).stem, "rows": raw.rows_in,
               "columns": {c: [{"value": f.value, "count": f.count, "detector": f.detector, "evidence": f.evidence,
                                "kind": f.kind, "share": f.share, "suspect": f.suspect}
                               for f in fs] for c, fs in policy.findings_.items() if fs}}
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0
