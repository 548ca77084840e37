"""``lakefill demo``: the bundled demo job end to end."""

from __future__ import annotations

from pathlib import Path

from lakefill.pipelines.commands._common import add_parser, job_config, print_outcome, run_engine


def register(sub) -> None:
    p = add_parser(sub, "demo", help="run the demo job end to end on the bundled example")
    p.add_argument("--out", default="out/demo", help="output folder of the demo (table, quarantine, reports, model)")
    p.add_argument("--engine", choices=["local", "beam", "spark"], default="beam", help="engine to run the demo on")
    p.add_argument("--run-id", help="run id (default: the demo config's)")
    p.set_defaults(func=run)


def run(args) -> int:
    from deltalake import DeltaTable

    from lakefill.pipelines.config import DEFAULT_CONFIG

    out = Path(args.out).resolve()
    config = job_config(str(DEFAULT_CONFIG), output=str(out), model=str(out / "model"), mode="append", run_id=args.run_id)
    print(f"lakefill demo: {config.input} on the {args.engine} engine")
    _drop_stale_demo_model(out / "model")
    outcome = run_engine(args.engine, config, [])
    print_outcome(outcome)
    import pyarrow.compute as pc

    from lakefill.transforms.stage import RUN_ID

    # the demo appends: show this run's rows, not an earlier demo's
    table = DeltaTable(outcome.table).to_pyarrow_table()
    table = table.filter(pc.equal(table.column(RUN_ID), outcome.run_id))
    imputed = table.filter(pc.greater(pc.list_value_length(table.column("_lf_imputed")), 0))
    cols = ["customer_id", "age", "income", "blood_pressure", "segment", "_lf_imputed", "_lf_method", "_lf_confidence"]
    print("\na few imputed rows:")
    print(imputed.select(cols).slice(0, 6).to_pandas().to_string(index=False))
    q = DeltaTable(outcome.quarantine).to_pyarrow_table()
    q = q.filter(pc.equal(q.column(RUN_ID), outcome.run_id))
    print("\nquarantined rows:")
    for row in q.select(["_lf_row_id", "reason"]).to_pylist()[:6]:
        print(f"  row {row['_lf_row_id']}: {row['reason']}")
    return 0


def _drop_stale_demo_model(model_dir: Path) -> None:
    """The demo owns its model folder: a model of an older artifact format (left by an earlier
    version's demo) is deleted so that the demo trains a new one instead of refusing it."""
    import shutil

    from lakefill.models.artifact import FORMAT, artifact_format

    fmt = artifact_format(model_dir)
    if (model_dir / "manifest.json").exists() and fmt != FORMAT:
        print(f"the demo model in {model_dir} is of format {fmt!r}, not {FORMAT!r}: training a new one")
        shutil.rmtree(model_dir)
