"""The ``lakefill`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from lakefill.models.config import TRAIN_ROWS, AEConfig
from lakefill.models.members import member_names, members
from lakefill.errors import ConfigError, LakefillError
from lakefill.transforms.storage import Location

EXAMPLES = Path(__file__).resolve().parent / "examples"


def _csv(args):
    """The CSV dialect the command line asks for (the delimiter is sniffed when not given)."""
    from lakefill.transforms.io import CsvOptions

    try:
        return CsvOptions(delimiter=args.delimiter, quotechar=args.quotechar, encoding=args.encoding)
    except ValueError as err:
        raise LakefillError(str(err)) from err


def _detect(args) -> int:
    from lakefill.transforms.detect import NullPolicy
    from lakefill.transforms.io import read_raw
    from lakefill.schema import load_schema

    schema = load_schema(args.schema) if args.schema else None
    raw = read_raw(args.path, csv_options=_csv(args))
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


def _schema_infer(args) -> int:
    from lakefill.transforms.detect import NullPolicy
    from lakefill.transforms.io import read_raw
    from lakefill.schema import dump_schema, infer_schema

    raw = read_raw(args.path, limit=args.sample_rows, csv_options=_csv(args))
    policy = NullPolicy(sample_rows=args.sample_rows).fit(raw.table)
    text = dump_schema(infer_schema(raw.table, name=args.name or Path(args.path).stem, policy=policy))
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _validate(args) -> int:
    from lakefill.transforms.io import quarantine_table, read_raw
    from lakefill.transforms.parse import detect_and_parse
    from lakefill.schema import load_schema
    from lakefill.transforms.validate import Validator

    schema = load_schema(args.schema)
    raw = read_raw(args.path, csv_options=_csv(args))
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


def _train(args) -> int:
    from lakefill.pipelines.local_job import train_to_dir
    from lakefill.transforms.detect import NullPolicy
    from lakefill.transforms.io import read_raw
    from lakefill.schema import infer_schema

    if args.job:
        from lakefill.pipelines.config import load_config

        job = load_config(args.job)
        if job.training.trainer != "local":
            raise ConfigError(f"{args.job}: training.trainer: {job.training.trainer} trains on Spark's executors, and "
                              f"`lakefill train` trains here; train on Spark (`spark-submit spark_job.py {args.job} "
                              f"--task train`) or set training.trainer: local")
        args.input = args.input or job.input
        args.schema = args.schema or job.schema_path
        args.out = args.out or job.model
        args.time_budget = args.time_budget or job.training.time_budget or job.train_time_budget
        args.train_rows = args.train_rows or job.training.train_rows
        args.seed = job.training.seed if args.seed is None else args.seed
        for name in job.training.without:
            setattr(args, f"no_{name}", True)
        options = job.storage_options
    else:
        options = {}
    args.seed = 0 if args.seed is None else args.seed
    if not args.input or not args.out:
        raise LakefillError("train needs --input and --out (or --job JOB.yaml, which names both)")
    source, model = Location(args.input, options), Location(args.out, options)
    if (model / "manifest.json").exists() and (args.if_missing or args.check_only):
        print(f"model {args.out} is there: nothing to train")
        return 0
    if args.check_only:
        raise LakefillError(f"model {args.out} does not exist (and --check-only forbids training it)")
    if args.schema:
        from lakefill.pipelines.launcher import load_schema_at

        schema = load_schema_at(Location(args.schema, options))
    else:
        raw = read_raw(source, limit=200_000, csv_options=_csv(args))
        schema = infer_schema(raw.table, name=source.stem, policy=NullPolicy().fit(raw.table))
    sizes = {k: v for k, v in (("hidden", args.hidden), ("depth", args.depth), ("code", args.code)) if v is not None}
    # a size given on the command line is the one network trained; else the default ensemble
    # --epochs given: honoured as given (no floor of optimiser steps raises it)
    epochs = {} if args.epochs is None else {"epochs": args.epochs, "min_steps": 0}
    without = tuple(name for name in member_names() if getattr(args, f"no_{name}", False))
    cfg = AEConfig(**epochs, random_state=args.seed, time_budget=args.time_budget, without=without,
                   squash=args.squash, **sizes, **({"extra_sizes": ()} if sizes else {}))
    out = train_to_dir(source, schema, model, config=cfg, progress=not args.quiet, csv_options=_csv(args),
                       train_rows=args.train_rows or TRAIN_ROWS, log=None if args.quiet else print)
    manifest = json.loads((Location(str(out), options) / "manifest.json").read_text())
    print(f"wrote model to {out} (weights sha256 {manifest['weights_sha256'][:12]}..., metrics {manifest['metrics']})")
    return 0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def _impute(args) -> int:
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    import pyarrow as pa

    from lakefill.models.artifact import load_artifact
    from lakefill.transforms.impute import CONFIDENCE, Imputer
    from lakefill.transforms.io import read_raw
    from lakefill.transforms.parse import detect_and_parse

    artifact = load_artifact(args.model)
    typed = detect_and_parse(read_raw(args.input, csv_options=_csv(args)), artifact.schema)
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


def _evaluate(args) -> int:
    from lakefill.pipelines.evaluate import evaluate, format_table, write_json

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    ae = json.loads(args.ae_config) if args.ae_config else None
    out = evaluate(data=Path(args.data), schema=Path(args.schema) if args.schema else None,
                   missing_rate=args.missing_rate, mechanism=args.mechanism, seeds=seeds, methods=methods,
                   ae_config=ae, train_rows=args.train_rows, precision=[p.strip() for p in args.precision.split(",")])
    print(format_table(out))
    if args.json:
        write_json(out, Path(args.json))
        print(f"wrote {args.json}")
    return 0


def _run(args, extra: list[str]) -> int:
    from lakefill.pipelines.config import load_config

    if args.config:
        if args.input:
            raise LakefillError(f"give a job config or --input, not both (the config names its input); got the job "
                                f"config {args.config!r} and --input {args.input!r} (a schema goes with --schema)")
        config = load_config(args.config)
    else:  # the shortest path: a file and an output folder; schema inferred, model trained there
        if not (args.input and args.output):
            raise LakefillError("run needs a job config (lakefill run JOB.yaml) or --input FILE and --output DIR")
        from lakefill.pipelines.config import JobConfig

        out = _uri_or_abs(args.output)
        fields = {"input": _uri_or_abs(args.input), "output": out, "train_if_missing": True,
                  "model": _uri_or_abs(args.model) if args.model else str(Location(out) / "model")}
        if args.schema:
            fields["schema"] = _uri_or_abs(args.schema)
        try:
            config = JobConfig.model_validate(fields)
        except Exception as err:  # pydantic names the field
            raise LakefillError(f"invalid run options: {err}") from err
    if args.config:  # the flags override the job config's fields
        config = config.model_copy(update={k: _uri_or_abs(v) for k, v in (("schema_path", args.schema),
                                                                          ("model", args.model)) if v})
    if args.run_id:
        config = config.model_copy(update={"run_id": args.run_id})
    if args.output and args.config:
        config = config.model_copy(update={"output": _uri_or_abs(args.output)})
    from lakefill.errors import NothingNew

    if args.verbose:
        os.environ["LAKEFILL_VERBOSE"] = "1"  # the engines' own logs (a Spark JVM started in this process)
    try:
        outcome = _run_engine(args.engine, config, extra)
    except NothingNew as news:  # an incremental run with no new file: done, not failed
        print(f"lakefill: {news}")
        return 0
    _print_outcome(outcome)
    return 0


def _uri_or_abs(path: str) -> str:
    """A URI as given (s3://, gs://, ...); a local path made absolute."""
    return path if "://" in path else str(Path(path).resolve())


_RUN_OPTIONS = ["--input", "--output", "--schema", "--model", "--run-id", "--engine", "--verbose"]


def _closest(flags: list[str], engine: str) -> str:
    """' (did you mean --output?)' for the flags that look like an option ``run`` knows."""
    import difflib

    known = list(_RUN_OPTIONS) + {"spark": ["--master", "--conf"], "beam": ["--runner", "--project", "--region",
                                  "--temp_location", "--setup_file", "--direct_num_workers"]}.get(engine, [])
    hints = []
    for flag in flags:
        if flag.startswith("-"):
            close = difflib.get_close_matches(flag.split("=", 1)[0], known, n=1, cutoff=0.6)
            if close:
                hints.append(f"{close[0]} for {flag.split('=', 1)[0]}")
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def _check_engine_options(engine: str, extra: list[str]) -> None:
    """Refuse, before any work, an option the engine does not take, naming the closest known one."""
    if engine == "local" and extra:
        raise LakefillError(f"unknown option(s) for the local engine: {extra}{_closest(extra, engine)}")
    try:
        if engine == "spark":
            from lakefill.pipelines.spark_job import parse_spark_args

            parse_spark_args(extra)
        elif engine == "beam" and extra:
            from lakefill.pipelines.beam_pipeline import pipeline_options

            pipeline_options(extra)
    except LakefillError as err:
        raise LakefillError(f"{err}{_closest(extra, engine)}") from err


def _run_engine(engine: str, config, extra: list[str]):
    _check_engine_options(engine, extra)
    if engine == "local":
        from lakefill.pipelines.local_job import run_local

        return run_local(config)
    if engine == "beam":
        from lakefill.pipelines.beam_pipeline import run_beam

        return run_beam(config, extra)
    if engine == "spark":
        from lakefill.pipelines.spark_job import run_spark

        return run_spark(config, extra)
    raise LakefillError(f"unknown engine {engine!r}")


def _print_outcome(outcome) -> None:
    c = outcome.counts
    print(f"run {outcome.run_id}: {c['rows_in']} rows in, {c['rows_written']} written, {c['rows_quarantined']} quarantined, "
          f"{c['rows_refined']} refined by reverse training"
          + ("" if outcome.committed else " (already committed before: nothing written twice)"))
    print(f"  lake table : {outcome.table}")
    print(f"  quarantine : {outcome.quarantine}")
    print(f"  report     : {outcome.report}")


def _demo(args) -> int:
    from deltalake import DeltaTable

    from lakefill.pipelines.config import DEFAULT_CONFIG, load_config

    config = load_config(DEFAULT_CONFIG)
    out = Path(args.out).resolve()
    config = config.model_copy(update={"output": str(out), "model": str(out / "model"), "mode": "append",
                                       "run_id": args.run_id or config.run_id})
    print(f"lakefill demo: {config.input} on the {args.engine} engine")
    _drop_stale_demo_model(out / "model")
    outcome = _run_engine(args.engine, config, [])
    _print_outcome(outcome)
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


def check_report(report: dict) -> list[str]:
    """Why a run's report should fail an orchestrator's check (empty: it passes)."""
    c, problems = report.get("counts", {}), []
    if c.get("rows_in") != c.get("rows_written", 0) + c.get("rows_quarantined", 0):
        problems.append(f"rows_in {c.get('rows_in')} != rows_written {c.get('rows_written')} + rows_quarantined "
                        f"{c.get('rows_quarantined')}")
    limit = (report.get("config") or {}).get("max_quarantine_share")
    share = c.get("rows_quarantined", 0) / max(c.get("rows_in") or 1, 1)
    if limit is not None and share > limit:
        problems.append(f"quarantined share {share:.1%} is over max_quarantine_share {limit:.1%}")
    if not report.get("committed") and not report.get("already_committed"):
        problems.append("the run committed nothing to the table")
    for col, v in (report.get("column_shares") or {}).items():
        if v.get("over"):
            found = ", ".join(f"{f['value']!r} ({f['detector']})" for f in v.get("found", [])) or "real nulls only"
            problems.append(f"column {col!r}: {v['imputed']} of {v['cells']} written cells ({v['imputed_share']:.0%}) were "
                            f"imputed, over its max_imputed_share of {v['max_imputed_share']:.0%} (replaced values: "
                            f"{found}); if that is intended, raise max_imputed_share for the column in the schema")
    for col, d in (report.get("drift") or {}).items():
        if d.get("drifted"):
            problems.append(f"column {col!r} drifted from the model's training rows: {d['measure']} {d['distance']:.3f} over "
                            f"its threshold {d['threshold']:.3f}; retrain the model on recent rows, or raise the column's "
                            f"drift_threshold in the schema if the change is expected")
    return problems


def _models_list(args) -> int:
    from lakefill.pipelines.versions import CHECK, runs_by_model, versions

    where = Location(args.path)
    runs: dict[str, list[str]] = {}
    if (where / "table" / "_delta_log").is_dir():  # an output: the versions its runs used, and theirs
        runs = runs_by_model(where)
        models = list(runs)
        if not models:
            raise LakefillError(f"{where}: no committed run names its model (runs before 2026-12-07 do not); "
                                f"give the model folder instead")
        seen, rows = set(), []
        for m in models:
            rows += [v for v in versions(m) if v[1].uri not in seen]
            seen |= {v[1].uri for v in rows}
    elif (where / "manifest.json").exists():
        rows = versions(where)
    else:
        raise LakefillError(f"{where} is neither a lakefill output (table/) nor a model folder (manifest.json)")
    print(f"{'version':<8} {'trained rows':>12} {'check':<28} {'runs':<24} model")
    for n, v in rows:
        manifest = json.loads((v / "manifest.json").read_text())
        check = json.loads((v / CHECK).read_text()) if (v / CHECK).exists() else None
        verdict = ("trained first" if check is None else
                   f"{'accepted' if check['accepted'] else 'not accepted'} {check['check_score']:.4g} "
                   f"vs {check['check_score_of_current']:.4g}")
        used = runs.get(str(v), [])
        shown = ", ".join(used[:3]) + (f" +{len(used) - 3}" if len(used) > 3 else "") if runs else "-"
        print(f"v{n:<7} {manifest.get('metrics', {}).get('rows', '?'):>12} {verdict:<28} {shown or 'none':<24} {v}")
    return 0


def _maintain(args) -> int:
    from lakefill.transforms.lake import maintain

    if not (args.compact or args.vacuum):
        raise LakefillError("maintain needs --compact, --vacuum or both")
    if args.retain_hours is not None and not args.vacuum:
        raise LakefillError("--retain-hours goes with --vacuum")
    out = Location(args.output)
    tables = [out / "table", out / "quarantine"]
    missing = [t for t in tables if not (t / "_delta_log").is_dir()]
    if missing:  # before any work: both are lakefill's, or nothing is touched
        raise LakefillError(f"{missing[0]} is not a Delta table (no _delta_log): maintain takes a lakefill output "
                            f"folder, the one that holds table/ and quarantine/")
    for t in tables:
        done = maintain(t, compact=args.compact, vacuum=args.vacuum, retain_hours=args.retain_hours)
        what = []
        if "compacted" in done:
            what.append(f"compacted {done['compacted']['files_removed']} files into {done['compacted']['files_added']}")
        if "vacuumed_files" in done:
            what.append(f"vacuumed {done['vacuumed_files']} files")
        print(f"{t}: {', '.join(what)}; {done['files_before']} -> {done['files_after']} files in the table's "
              f"version {done['version_after']}")
    return 0


def _report(args) -> int:
    from lakefill.pipelines.report import render_report, suspects_of

    options: dict = {}
    if args.run_dir:
        run_dir = Location(args.run_dir)
    elif args.job and args.run_id:
        from lakefill.pipelines.config import load_config

        job = load_config(args.job)
        options = job.storage_options
        run_dir = Location(args.output or job.output, options) / "reports" / args.run_id
    else:
        raise LakefillError("report needs a run folder, or --job JOB.yaml and --run-id ID")
    if not (run_dir / "report.json").exists():
        raise LakefillError(f"{run_dir} has no report.json: pass a run's folder, OUTPUT/reports/RUN_ID")
    if run_dir.is_local:
        page = render_report(run_dir.local_path, options=options)
    else:  # rendered here, written back beside its report.json
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "report.json").write_bytes((run_dir / "report.json").read_bytes())
            (run_dir / "report.html").write_bytes(render_report(Path(tmp), options=options).read_bytes())
            (run_dir / "report.json").write_bytes((Path(tmp) / "report.json").read_bytes())  # with column_shares
        page = run_dir / "report.html"
    report = json.loads((run_dir / "report.json").read_text())
    c = report.get("counts", {})
    print(f"run {report['run_id']} ({report.get('engine')}, {'committed' if report.get('committed') else 'not committed'}): "
          f"{c.get('rows_in')} rows in, {c.get('rows_written')} written, {c.get('rows_quarantined')} quarantined")
    for column, f in suspects_of(report):
        print(f"  suspect, kept as a value: {column} {f['value']!r} ({f['count']} cells of the sample; list it in "
              f"null_values to replace it)")
    for reason, n in c.get("quarantined_by_reason", {}).items():
        print(f"  quarantined {n:>8} : {reason}")
    print(f"report: {page}")
    if args.check:
        problems = check_report(report)
        for p in problems:
            print(f"check failed: {p}")
        if problems:
            return 1
        print(f"check passed: run {report['run_id']} is in {report.get('table')}")
    if args.open and isinstance(page, Path):
        import webbrowser

        webbrowser.open(page.resolve().as_uri())
    return 0


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="on an error, show the Python traceback too")
    ap = argparse.ArgumentParser(prog="lakefill", parents=[debug], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 description="Find disguised nulls, validate, impute with a masked autoencoder, write to Delta.",
                                 epilog=EXIT_CODES)
    sub = ap.add_subparsers(dest="command", required=True)
    csvp = argparse.ArgumentParser(add_help=False)
    csvp.add_argument("--delimiter", help="CSV field delimiter, one character (default: sniffed from the file)")
    csvp.add_argument("--quotechar", default='"', help='CSV quote character (default ")')
    csvp.add_argument("--encoding", default="utf-8-sig", help="text encoding of a CSV file (default utf-8)")
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: _add_parser(*a, parents=[debug, *k.pop("parents", [])], **k)

    p = sub.add_parser("detect", help="find disguised nulls in a CSV/Parquet file", parents=[csvp])
    p.add_argument("path", help="the table: CSV, Parquet or JSON Lines")
    p.add_argument("--json", help="write findings as JSON (docs/benchmarks.md, protocol C)")
    p.add_argument("--schema", help="schema.yaml with pinned values / detectors switched off")
    p.add_argument("--sample-rows", type=int, default=200_000, help="rows the detectors look at (from the top of the file)")
    p.set_defaults(func=_detect)

    p = sub.add_parser("schema", help="schema commands")
    ss = p.add_subparsers(dest="schema_command", required=True)
    pi = ss.add_parser("infer", help="infer a schema.yaml from a file (printed, or --out)", parents=[debug, csvp])
    pi.add_argument("path", help="the table: CSV, Parquet or JSON Lines")
    pi.add_argument("--out", help="write the schema here instead of printing it")
    pi.add_argument("--name", help="the schema's table name (default: the file name)")
    pi.add_argument("--sample-rows", type=int, default=200_000, help="rows inference looks at (from the top of the file)")
    pi.set_defaults(func=_schema_infer)

    p = sub.add_parser("validate", help="detect + type + validate a file against a schema (GX)", parents=[csvp])
    p.add_argument("path", help="the table: CSV, Parquet or JSON Lines")
    p.add_argument("--schema", required=True, help="schema.yaml to validate against")
    p.add_argument("--out", help="folder for valid rows, quarantine and Data Docs")
    p.add_argument("--show", type=int, default=10, help="quarantined rows to print")
    p.set_defaults(func=_validate)

    p = sub.add_parser("train", help="train a model artifact", parents=[csvp])
    p.add_argument("--input", help="the table to train on (CSV, Parquet or JSON Lines)")
    p.add_argument("--schema", help="schema.yaml (inferred from the input when absent)")
    p.add_argument("--out", help="the model folder to write (manifest.json + weights.safetensors)")
    p.add_argument("--job", help="take input, schema and model folder (--out) from a job config")
    p.add_argument("--if-missing", action="store_true", help="do nothing if the model folder has a model")
    p.add_argument("--check-only", action="store_true", help="fail if the model is missing; never train")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"train for exactly this many epochs at most (early stopping may end sooner); by default "
                        f"{AEConfig.epochs}, raised on small tables to reach {AEConfig.min_steps} optimiser steps")
    sizes = " and ".join("x".join(map(str, size)) for size in AEConfig().sizes)
    p.add_argument("--hidden", type=int, help="network width. Giving --hidden, --depth or --code trains one network "
                   f"of that size (the others at their defaults); by default the model is the ensemble of {sizes} "
                   "(width x depth x code)")
    p.add_argument("--depth", type=int, help=f"hidden layers on each side (default {AEConfig.depth})")
    p.add_argument("--code", type=int, help=f"bottleneck width (default {AEConfig.code})")
    for member in members():  # one flag per registered member (lakefill.models.members)
        p.add_argument(f"--no-{member.name}", action="store_true", help=member.help)
    p.add_argument("--squash", type=float, default=AEConfig.squash, metavar="C",
                   help="opt-in for tables with heavy-tailed numeric columns: the networks read a robust z beyond "
                        "+-C as C + log(1 + |z| - C) (3 is the value measured in the README; default 0, off)")
    p.add_argument("--time-budget", type=_seconds, default=0.0, metavar="SECONDS",
                   help="finish training within this many seconds: the networks' schedules are planned to fit "
                        "(from their measured step time), training stops at the limit and members not reached are "
                        "skipped. A budget that binds makes the model depend on the machine's speed (default: none)")
    p.add_argument("--seed", type=int, default=None, help="random seed of the sample and the model (same data and seed "
                   "give the same model; default 0, or the job's training: seed)")
    p.add_argument("--train-rows", type=int, default=None, metavar="N",
                   help=f"train on at most N rows drawn uniformly from the whole input by a seeded hash of their row "
                        f"ids (one streaming pass; default {TRAIN_ROWS:,}, or the job's training: train_rows)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (by default one bar over every network's "
                                                          "steps, with its ETA, on stderr)")
    p.set_defaults(func=_train)

    p = sub.add_parser("impute", help="impute a file with a model (single machine)", parents=[csvp])
    p.add_argument("--input", required=True, help="the table to impute (CSV, Parquet or JSON Lines)")
    p.add_argument("--model", required=True, help="the model folder (from lakefill train)")
    p.add_argument("--out", required=True, help=".parquet or .csv")
    p.add_argument("--refine-below", type=float, default=0.0, help="reverse-train rows with confidence below this")
    p.set_defaults(func=_impute)

    p = sub.add_parser("evaluate", help="benchmark protocol A: accuracy against scikit-learn baselines")
    p.add_argument("--data", required=True, help="a complete CSV table; cells are hidden by the protocol")
    p.add_argument("--schema", help="schema.yaml (inferred when absent); it says which columns are categorical")
    p.add_argument("--missing-rate", type=float, default=0.2, help="share of cells hidden (default 0.2)")
    p.add_argument("--mechanism", choices=["mcar", "mar", "mnar"], default="mcar", help="how cells are hidden (docs: protocol A)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the masks and models")
    p.add_argument("--methods", default="lakefill,lakefill-reverse,mean,knn,mice,missforest", help="comma-separated methods to compare")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--ae-config", help="JSON overrides of the autoencoder settings (for experiments)")
    p.add_argument("--train-rows", type=int, default=None, metavar="N",
                   help="lakefill fits on the training sample of N rows (seeded, as `lakefill train` draws it) and "
                        "fills the whole table")
    p.add_argument("--precision", default="fp32", metavar="fp32|bf16",
                   help="lakefill's fill in fp32 or under bfloat16 autocast, as a job's precision (default fp32); "
                        "fp32,bf16 fills from the same fit both ways (the second as <method>@bf16)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("run", help="run the whole stage from a job config",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="engine options (any other flag is refused by name):\n"
                              "  beam   Beam pipeline options, e.g. --runner DataflowRunner --project P --region R\n"
                              "         --temp_location gs://b/tmp --setup_file ./setup.py --direct_num_workers 2\n"
                              "         (every option of apache_beam.options.pipeline_options.PipelineOptions)\n"
                              "  spark  --master URL (local[*] by default), --conf key=value (repeatable)\n"
                              "  local  none")
    p.add_argument("config", nargs="?", help="the job config (YAML), validated before any work")
    p.add_argument("--input", help="without a job config: the file to run on (the schema is inferred and a model "
                                   "trained into OUTPUT/model the first time)")
    p.add_argument("--engine", choices=["local", "beam", "spark"], default="beam",
                   help="beam (default: Direct runner unless --runner is given), spark (local[*] unless --master), "
                        "or local (one process, no engine)")
    p.add_argument("--run-id", help="the run's id (overrides the job config's): a re-run of a committed id writes "
                                     "nothing twice and completes a run whose quarantine commit failed")
    p.add_argument("--output", help="output folder (overrides the job config's; with --input, where everything goes)")
    p.add_argument("--verbose", action="store_true", help="the engines' own log lines too (Spark's JVM and log4j "
                                                          "warnings, Beam's): by default only lakefill's and errors")
    p.add_argument("--schema", help="the table's schema (YAML): with --input, used instead of inferring one; "
                                    "overrides a job config's")
    p.add_argument("--model", help="the model folder: with --input, OUTPUT/model unless given (trained there if "
                                   "missing); overrides a job config's")
    p.set_defaults(func=_run, passthrough=True)

    p = sub.add_parser("models", help="a job's model versions: training rows, held-out checks, the runs that used them")
    msub = p.add_subparsers(dest="models_command", required=True)
    q = msub.add_parser("list", help="list the versions of an output's models, or of a model folder")
    q.add_argument("path", help="a lakefill output (holding table/) or a model folder")
    q.set_defaults(func=_models_list)

    p = sub.add_parser("maintain", help="compact and vacuum an output's Delta tables (table and quarantine)")
    p.add_argument("output", help="the job's output folder or URI (holding table/ and quarantine/)")
    p.add_argument("--compact", action="store_true", help="rewrite small files into larger ones (deltalake optimize)")
    p.add_argument("--vacuum", action="store_true", help="delete files no recent version reads (deltalake vacuum)")
    p.add_argument("--retain-hours", type=float, help="with --vacuum: keep files read by versions of the last H hours "
                                                      "(default Delta's 168; less lets older versions go unreadable)")
    p.set_defaults(func=_maintain)

    p = sub.add_parser("report", help="render and print a run's report (report.html beside report.json)")
    p.add_argument("run_dir", nargs="?", help="OUTPUT/reports/RUN_ID")
    p.add_argument("--job", help="find the run through its job config (with --run-id)")
    p.add_argument("--run-id", help="the run whose report to read (with --job)")
    p.add_argument("--output", help="the run's output folder, if not the job config's")
    p.add_argument("--check", action="store_true",
                   help="exit 1 unless the run is committed with no row lost and the quarantine under its share")
    p.add_argument("--open", action="store_true", help="open report.html in a browser")
    p.set_defaults(func=_report)

    p = sub.add_parser("demo", help="run the demo job end to end on the bundled example")
    p.add_argument("--out", default="out/demo", help="output folder of the demo (table, quarantine, reports, model)")
    p.add_argument("--engine", choices=["local", "beam", "spark"], default="beam", help="engine to run the demo on")
    p.add_argument("--run-id", help="run id (default: the demo config's)")
    p.set_defaults(func=_demo)
    return ap


EXIT_CODES = """exit codes:
  0  done
  1  `lakefill report --check`: the run failed its check
  2  a problem with the input, schema, job config, model or output: the message names the file,
     row, column or URI, and what to change
  3  an unexpected error inside lakefill (the message says so; --debug shows the traceback)"""


class _QuietImports(logging.Filter):
    """Beam warns at import about GCP clients that a run without GCP I/O never uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    if not any(isinstance(f, _QuietImports) for f in logging.getLogger().filters):
        logging.getLogger().addFilter(_QuietImports())
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = getattr(args, "debug", False)
    try:
        return args.func(args, extra) if getattr(args, "passthrough", False) else args.func(args)
    except KeyboardInterrupt:
        print("lakefill: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output was piped into a reader that stopped (| head): not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (LakefillError, FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError) as err:
        if debug:
            raise
        text = str(err)
        if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
            text = f"{err.filename}: {text}"
        print(f"lakefill: error: {text}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the last line of defence of a command line
        if debug:
            raise
        print(f"lakefill: internal error: {type(err).__name__}: {err}\n"
              f"  this is a bug in lakefill, not in your data: run the same command with --debug for the traceback "
              f"and report it", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
