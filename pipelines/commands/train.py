"""``lakefill train``: a model artifact from a table (or from a job config's input)."""

from __future__ import annotations

import json

from lakefill.errors import ConfigError, LakefillError
from lakefill.models.config import TRAIN_ROWS, AEConfig
from lakefill.models.members import member_names, members
from lakefill.pipelines.commands._common import add_parser, csv_options, job_config, seconds
from lakefill.transforms.storage import Location


def register(sub) -> None:
    p = add_parser(sub, "train", help="train a model artifact", csv=True)
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
    p.add_argument("--squash", type=float, default=None, metavar="C",
                   help="opt-in for tables with heavy-tailed numeric columns: the networks read a robust z beyond "
                        "+-C as C + log(1 + |z| - C) (3 is the value measured in the README; default 0, off)")
    p.add_argument("--time-budget", type=seconds, default=None, metavar="SECONDS",
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
    p.set_defaults(func=run)


def run(args) -> int:
    from lakefill.pipelines.local_job import train_to_dir
    from lakefill.transforms.detect import NullPolicy
    from lakefill.transforms.io import read_raw
    from lakefill.pipelines.config import training_config
    from lakefill.schema import infer_schema

    job = job_config(args.job) if args.job else None
    if job is not None and job.training.trainer != "local":
        raise ConfigError(f"{args.job}: training.trainer: {job.training.trainer} trains on Spark's executors, and "
                          f"`lakefill train` trains here; train on Spark (`spark-submit spark_job.py {args.job} "
                          f"--task train`) or set training.trainer: local")
    # the flags over the job's training: section (or its defaults), checked as the job's are
    flags = {"seed": args.seed, "time_budget": args.time_budget or None, "train_rows": args.train_rows,
             "epochs": args.epochs, "hidden": args.hidden, "depth": args.depth, "code": args.code,
             "squash": args.squash}
    without = [name for name in member_names() if getattr(args, f"no_{name}", False)]
    base = job.training.model_dump() if job is not None else {}
    base["without"] = sorted(set(base.get("without", [])) | set(without), key=member_names().index)
    training = training_config({**base, **{k: v for k, v in flags.items() if v is not None}})
    options = job.storage_options if job is not None else {}
    args.input = args.input or (job.input if job is not None else None)
    args.schema = args.schema or (job.schema_path if job is not None else None)
    args.out = args.out or (job.model if job is not None else None)
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
        raw = read_raw(source, limit=200_000, csv_options=csv_options(args))
        schema = infer_schema(raw.table, name=source.stem, policy=NullPolicy().fit(raw.table))
    cfg = training.ae_config(job.train_time_budget if job is not None else 0.0)
    out = train_to_dir(source, schema, model, config=cfg, progress=not args.quiet, csv_options=csv_options(args),
                       train_rows=training.train_rows, log=None if args.quiet else print)
    manifest = json.loads((Location(str(out), options) / "manifest.json").read_text())
    print(f"wrote model to {out} (weights sha256 {manifest['weights_sha256'][:12]}..., metrics {manifest['metrics']})")
    return 0
