"""``lakefill validate``: detect, type and validate a file against a schema (GX)."""

from __future__ import annotations

from pathlib import Path

from lakefill.pipelines.commands._common import add_parser, csv_options


def register(sub) -> None:
    p = add_parser(sub, "validate", help="detect + type + validate a file against a schema (GX)", csv=True)
    p.add_argument("path", help="the table: CSV, Parquet or JSON Lines")
    p.add_argument("--schema", required=True, help="schema.yaml to validate against")
    p.add_argument("--out", help="folder for valid rows, quarantine and Data Docs")
    p.add_argument("--show", type=int, default=10, help="quarantined rows to print")
    p.set_defaults(func=run)


def run(args) -> int:
    from lakefill.transforms.io import quarantine_table, read_raw
    from lakefill.transforms.parse import detect_and_parse
    from lakefill.schema import load_schema
    from lakefill.transforms.validate import Validator

    schema = load_schema(args.schema)
    raw = read_raw(args.path, csv_options=csv_options(args))
    typed = detect_and_parse(raw, schema)
    counts = typed.disguised
    validator = Validator(schema)
    good, failed = validator.validate(typed.table)
    quarantined = typed.quarantined + failed
    print(f"{args.path}: {raw.rows_in} rows in, {good.num_rows} pass, {len(quarantined)} quarantined")
    print(f"disguised nulls replaced: { {k: v for k, v in counts.items() if v} }")
    for q in quarantined[: args.show]:
        print(f"  row {q.row_id}: {q.reason}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        import pyarrow.parquet as pq

        pq.write_table(good, out / "valid.parquet")
        pq.write_table(quarantine_table(quarantined), out / "quarantine.parquet")
        index = validator.write_data_docs(good, out / "data_docs")
        print(f"wrote {out}/valid.parquet, {out}/quarantine.parquet and Data Docs at {index}")
    return 0
