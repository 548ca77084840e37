"""``lakefill impute``: fill one file with a model, on this machine."""

from __future__ import annotations

from pathlib import Path

from lakefill.pipelines.commands._common import add_parser, csv_options


def register(sub) -> None:
    p = add_parser(sub, "impute", help="impute a file with a model (single machine)", csv=True)
    p.add_argument("--input", required=True, help="the table to impute (CSV, Parquet or JSON Lines)")
    p.add_argument("--model", required=True, help="the model folder (from lakefill train)")
    p.add_argument("--out", required=True, help=".parquet or .csv")
    p.add_argument("--refine-below", type=float, default=0.0, help="reverse-train rows with confidence below this")
    p.set_defaults(func=run)


def run(args) -> int:
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    import pyarrow as pa

    from lakefill.models.artifact import load_artifact
    from lakefill.transforms.impute import CONFIDENCE, Imputer
    from lakefill.transforms.io import read_raw
    from lakefill.transforms.parse import detect_and_parse

    artifact = load_artifact(args.model)
    typed = detect_and_parse(read_raw(args.input, csv_options=csv_options(args)), artifact.schema)
    imputer = Imputer(artifact)
    out = imputer.impute(typed.table)
    if args.refine_below > 0:
        low = pc.less(out.column(CONFIDENCE), args.refine_below)
        if pc.any(low).as_py():
            out = pa.concat_tables([out.filter(pc.invert(low)), imputer.refine(out.filter(low))]).sort_by("_lf_row_id")
    path = Path(args.out)
    if path.suffix.lower() == ".csv":
        flat = out
        for i, field in enumerate(out.schema):  # the provenance lists (_lf_imputed ...) as "a;b" cells
            if pa.types.is_list(field.type):
                flat = flat.set_column(i, field.name, pc.binary_join(out.column(field.name), ";"))
        pcsv.write_csv(flat, path)
    else:
        pq.write_table(out, path)
    n_cells = int(pc.sum(pc.list_value_length(out.column("_lf_imputed"))).as_py() or 0)
    print(f"{args.input}: imputed {n_cells} cells in {out.num_rows} rows; {len(typed.quarantined)} rows "
          f"unreadable or mistyped (not written); wrote {path}")
    return 0
