"""``lakefill run``: the whole stage from a job config, or from ``--input`` and ``--output``."""

from __future__ import annotations

import argparse
import os

from lakefill.errors import LakefillError
from lakefill.pipelines.commands._common import add_parser, job_config, print_outcome, run_engine, uri_or_abs
from lakefill.transforms.storage import Location


def register(sub) -> None:
    p = add_parser(sub, "run", help="run the whole stage from a job config",
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
    p.set_defaults(func=run, passthrough=True)


def run(args, extra: list[str]) -> int:
    flags = {"output": args.output, "schema": args.schema, "model": args.model, "run_id": args.run_id}
    if args.config:  # the flags override the job config's fields
        if args.input:
            raise LakefillError(f"give a job config or --input, not both (the config names its input); got the job "
                                f"config {args.config!r} and --input {args.input!r} (a schema goes with --schema)")
        config = job_config(args.config, **flags)
    else:  # the shortest path: a file and an output folder; schema inferred, model trained there
        if not (args.input and args.output):
            raise LakefillError("run needs a job config (lakefill run JOB.yaml) or --input FILE and --output DIR")
        out = Location(uri_or_abs(args.output))
        config = job_config(None, **{**flags, "input": args.input, "train_if_missing": True,
                                     "model": args.model or str(out / "model")})
    from lakefill.errors import NothingNew

    if args.verbose:
        os.environ["LAKEFILL_VERBOSE"] = "1"  # the engines' own logs (a Spark JVM started in this process)
    try:
        outcome = run_engine(args.engine, config, extra)
    except NothingNew as news:  # an incremental run with no new file: done, not failed
        print(f"lakefill: {news}")
        return 0
    print_outcome(outcome)
    return 0
