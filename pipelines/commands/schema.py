"""``lakefill schema infer``: a schema.yaml inferred from a file."""

from __future__ import annotations

import sys
from pathlib import Path

from lakefill.pipelines.commands._common import add_parser, csv_options


def register(sub) -> None:
    p = add_parser(sub, "schema", help="schema commands")
    ss = p.add_subparsers(dest="schema_command", required=True)
    pi = add_parser(ss, "infer", help="infer a schema.yaml from a file (printed, or --out)", csv=True)
    pi.add_argument("path", help="the table: CSV, Parquet or JSON Lines")
    pi.add_argument("--out", help="write the schema here instead of printing it")
    pi.add_argument("--name", help="the schema's table name (default: the file name)")
    pi.add_argument("--sample-rows", type=int, default=200_000, help="rows inference looks at (from the top of the file)")
    pi.set_defaults(func=infer)


def infer(args) -> int:
    from lakefill.transforms.detect import NullPolicy
    from lakefill.transforms.io import read_raw
    from lakefill.schema import dump_schema, infer_schema

    raw = read_raw(args.path, limit=args.sample_rows, csv_options=csv_options(args))
    policy = NullPolicy(sample_rows=args.sample_rows).fit(raw.table)
    text = dump_schema(infer_schema(raw.table, name=args.name or Path(args.path).stem, policy=policy))
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
