"""Protocol D (docs/benchmarks.md): rows per second of the stage, per engine.

    python -m benchmarks.throughput --engine beam|spark|core --rows N [--device cpu|gpu] --json OUT.json

The input is ``tabular/letter.csv`` resampled to N rows (seeded) with 20% of the cells blanked
at random (MCAR), written once as Parquet (row groups of 25,000 rows) under the cache folder.
The model is trained once on letter (default settings) and cached beside it.

- core : the stage's steps (clean, impute, refine, finish) on Arrow batches in one process, no
         engine, no lake; also imputation-only and reverse-training rows/s, and the
         scikit-learn baselines (mean, kNN, MICE) on a 20,000-row slice.
- beam : the whole stage (``run_beam``) against a pass-through Beam job that reads the same
         files with the same ReadRaw and writes them with the same WriteToLake + one commit.
- spark: the whole stage (``run_spark``) against a pass-through Spark job that reads the same
         Parquet and writes Parquet.

``--store s3`` (beam and spark): the stage also runs with its input, model and output on an S3
server on 127.0.0.1 (moto's server mode, ``lakefill.testing.S3Server``), in the same run as the
stage on local disk, then the stage on local disk once more (both warm); the JSON adds
``store``, ``store_stage_rows_per_s``, ``local_warm_stage_rows_per_s`` and ``store_ratio``
(store / the warm local run).

Every run also measures, on the same input: the stage with the job's ``impute: false`` (read,
detect, validate, write: ``no_model_rows_per_s``), the model alone (``Imputer.impute`` in this
process on the stage's own parsed batches: ``model_only_rows_per_s``), the model's FLOPs per row
(torch's FlopCounterMode) and the machine's dense fp32 matmul rate with the same threads, and
the ratios ``stage_to_model``, ``no_model_to_passthrough`` and ``model_to_machine``.
``--device gpu`` runs the model on the GPU (``benchmarks/gpu.sh`` runs the GPU set).

Every figure is wall-clock on this machine and printed with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
LETTER = ROOT.parent / "shared" / "data" / "tabular" / "letter.csv"
CACHE = ROOT / "benchmarks" / ".cache"
DEVICE = ["cpu"]  # --device: where the model runs in every job of the run (cpu | gpu)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}{gpu}, {platform.system()} {platform.release()}"


def make_input(rows: int, seed: int = 0) -> Path:
    """letter resampled to ``rows`` rows with 20% MCAR holes, as Parquet in row groups of
    25,000 rows (both engines read consecutive row groups of up to the job's batch size as one
    unit), cached."""
    path = CACHE / f"letter_{rows}_s{seed}_rg25k.parquet"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    base = pacsv.read_csv(LETTER)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    writer = None
    for start in range(0, rows, 100_000):
        n = min(100_000, rows - start)
        chunk = base.take(pa.array(rng.integers(0, base.num_rows, n)))
        cols = {}
        for name in chunk.column_names:
            col = chunk.column(name).combine_chunks()
            hole = rng.random(n) < 0.2
            cols[name] = pc.if_else(pa.array(hole), pa.scalar(None, col.type), col) if name != "lettr" else col
        t = pa.table(cols)
        writer = writer or pq.ParquetWriter(tmp, t.schema)
        writer.write_table(t, row_group_size=25_000)
    writer.close()
    tmp.rename(path)
    return path


def model_and_schema() -> tuple[Path, Path]:
    """The letter model (default settings) and its schema, trained once and cached."""
    from lakefill.pipelines.local_job import train_to_dir
    from lakefill.transforms.detect import NullPolicy
    from lakefill.transforms.io import read_raw
    from lakefill.schema import dump_schema, infer_schema, load_schema

    model, schema_path = CACHE / "letter-model", CACHE / "letter.schema.yaml"
    if not schema_path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        raw = read_raw(LETTER)
        schema = infer_schema(raw.table, name="letter", policy=NullPolicy().fit(raw.table))
        # resampled tables have 20% holes in every column but the label: let the schema allow them
        schema = schema.model_copy(update={"columns": [c.model_copy(update={"nullable": True, "unique": False})
                                                       for c in schema.columns]})
        schema_path.write_text(dump_schema(schema))
    if _stale(model):
        t = time.perf_counter()
        train_to_dir(str(LETTER), load_schema(schema_path), model)
        print(f"trained the letter model in {time.perf_counter() - t:.0f} s")
    return model, schema_path


def _stale(model: Path) -> bool:
    """No cached model, or one of an older artifact format (retrained, not refused)."""
    from lakefill.models.artifact import FORMAT, artifact_format

    return artifact_format(model) != FORMAT


def job(input_path: Path, out: Path, run_id: str, **extra):
    from lakefill.pipelines.config import JobConfig

    model, schema = model_and_schema()
    return JobConfig.model_validate({"input": str(input_path), "schema": str(schema), "model": str(model),
                                     "output": str(out), "run_id": run_id, "mode": "overwrite",
                                     "max_quarantine_share": 1.0, "device": DEVICE[0], **extra})


def bench_store(engine: str, path: Path, rows: int, args: list[str]) -> dict:
    """The whole stage with input, model and output on an S3 server on 127.0.0.1."""
    from lakefill.testing import S3Server
    from lakefill.transforms.storage import Location

    model, schema = model_and_schema()
    with S3Server() as s3:
        root = s3.bucket("bench")
        Location(f"{root}/in/{path.name}", s3.options).upload(path)
        Location(f"{root}/model", s3.options).upload(model)
        cfg = job(path, CACHE / "unused", "store", input=f"{root}/in/{path.name}", model=f"{root}/model",
                  output=f"{root}/out", storage_options=s3.options)
        t = time.perf_counter()
        if engine == "beam":
            from lakefill.pipelines.beam_pipeline import run_beam

            outcome = run_beam(cfg, args, log=lambda *_: None)
        else:
            from lakefill.pipelines.spark_job import run_spark

            outcome = run_spark(cfg, args, log=lambda *_: None)
        seconds = time.perf_counter() - t
    # the stage on local disk again, after the store run: both warm (the first stage run of a
    # process pays the engine's start, the workers' imports and the model load)
    t = time.perf_counter()
    if engine == "beam":
        run_beam(job(path, CACHE / f"{engine}-out-warm", "warm"), args, log=lambda *_: None)
    else:
        run_spark(job(path, CACHE / f"{engine}-out-warm", "warm"), args, log=lambda *_: None)
    warm = time.perf_counter() - t
    return {"store_stage_rows_per_s": rows / seconds, "store_stage_seconds": seconds, "store_counts": outcome.counts,
            "local_warm_stage_rows_per_s": rows / warm, "local_warm_stage_seconds": warm}


def _core_stage(cfg) -> tuple:
    """The stage plan in this process, step by step (the local engine's loop without the write):
    (the prepared run, prepare seconds, loop seconds, seconds per step, rows sent to refine)."""
    from lakefill.pipelines.launcher import plan_for, prepare
    from lakefill.transforms.impute import Imputer
    from lakefill.transforms.io import iter_raw
    from lakefill.transforms.plan import Runtime, run_steps

    t0 = time.perf_counter()
    prep = prepare(cfg, log=lambda *_: None)
    prepare_s = time.perf_counter() - t0
    imputer = Imputer(prep.artifact, device=cfg.device) if prep.artifact is not None else None
    plan, rt = plan_for(prep), Runtime(lambda: imputer)
    run_steps(plan.steps, prep.sample.table.slice(0, 100), rt)  # builds the validators once, as a worker does
    steps: dict[str, float] = {}
    n_low = 0
    t0 = time.perf_counter()
    for chunk in iter_raw(cfg.input, batch_rows=cfg.batch_size):
        n_low += run_steps(plan.steps, chunk.table, rt, timings=steps).counters["rows_reverse_tried"]
    return prep, prepare_s, time.perf_counter() - t0, steps, n_low


def bench_core(path: Path, rows: int) -> dict:
    """The stage plan in this process, step by step (the local engine's loop without the write)."""
    import torch

    _, _, total, steps, n_low = _core_stage(job(path, CACHE / "core-out", "core"))
    threads = torch.get_num_threads()
    adapted = bench_core_adapted(path, rows)
    return {"stage_rows_per_s": rows / total, "seconds": total, "adapt": adapted,
            "steps_seconds": {k: round(v, 4) for k, v in steps.items()},
            "impute_rows_per_s": rows / steps["impute"], "impute_rows_per_s_per_core": rows / steps["impute"] / threads,
            "torch_threads": threads, "rows_refined": n_low,
            "reverse_rows_per_s": (n_low / steps["refine"]) if n_low else None,
            "baselines_rows_per_s": bench_baselines(path)}


def bench_core_adapted(path: Path, rows: int) -> dict:
    """The same stage with the job's ``adapt: true``: the launcher's adaptation on the first
    ``sample_rows`` records (its seconds), then the stage refining through the adapted networks
    when the check rows accept them (letter resampled is the table the model learned: they may not)."""
    model, _ = model_and_schema()
    version = model.parent / f"{model.name}.adapted-core-adapt"
    shutil.rmtree(version, ignore_errors=True)
    prep, prepare_s, total, steps, n_low = _core_stage(job(path, CACHE / "core-out-adapt", "core-adapt", adapt=True))
    shutil.rmtree(version, ignore_errors=True)
    a = prep.adaptation or {}
    return {"used": bool(a.get("used")), "adapt_seconds": a.get("seconds"), "prepare_seconds": round(prepare_s, 3),
            "rows_fitted": a.get("rows_fitted"), "stage_rows_per_s": rows / total, "rows_refined": n_low,
            "reverse_rows_per_s": (n_low / steps["refine"]) if n_low else None}


def bench_baselines(path: Path, n: int = 20_000) -> dict:
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer

    t = pq.read_table(path).slice(0, n)
    X = np.column_stack([t.column(c).to_numpy(zero_copy_only=False).astype(float)
                         for c in t.column_names if c != "lettr"])
    out = {}
    for name, imp in (("mean", SimpleImputer()), ("knn", KNNImputer(n_neighbors=5)),
                      ("mice", IterativeImputer(max_iter=10, random_state=0))):
        s = time.perf_counter()
        imp.fit_transform(X)
        out[name] = n / (time.perf_counter() - s)
    return out


def matmul_rate(device: str = "cpu", n: int = 2048, repeats: int = 8) -> float:
    """The machine's dense fp32 matmul rate (FLOP/s) with torch's threads as they are set:
    ``repeats`` products of two n x n matrices, after one warm-up."""
    import torch

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    (a @ b).sum().item()
    sync()
    t = time.perf_counter()
    for _ in range(repeats):
        c = a @ b
    sync()
    seconds = time.perf_counter() - t
    del c
    return 2 * n ** 3 * repeats / seconds


def flops_per_row(imputer, batch: pa.Table) -> float:
    """The model's FLOPs per row in ``Imputer.impute`` (torch's FlopCounterMode counts every
    matmul and convolution of the forward passes on ``batch``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        imputer.impute(batch)
    return counter.get_total_flops() / max(batch.num_rows, 1)


def model_cost(path: Path, rows: int, device: str = "cpu", cap: int = 1_000_000) -> dict:
    """The model alone, in this process, on the stage's own parsed batches: the first ``cap``
    rows read, detected and pre-validated as the stage does (``detect``, ``validate_pre``), then
    ``Imputer.impute`` timed on those batches alone; its FLOPs per row; the machine's matmul
    rate with the same threads; and the model's share of that rate."""
    import torch

    from lakefill.pipelines.launcher import plan_for, prepare
    from lakefill.transforms.impute import Imputer
    from lakefill.transforms.io import iter_raw
    from lakefill.transforms.plan import Runtime, run_steps

    cfg = job(path, CACHE / "model-only-out", "model-only", device=device)
    prep = prepare(cfg, log=lambda *_: None)
    imputer = Imputer(prep.artifact, device=cfg.device)
    plan, rt = plan_for(prep), Runtime(lambda: imputer)
    head = [s for s in plan.steps if s.name in ("detect", "validate_pre")]
    batches, n = [], 0
    for chunk in iter_raw(cfg.input, batch_rows=cfg.batch_size):
        batches.append(run_steps(head, chunk.table, rt).table)
        n += batches[-1].num_rows
        if n >= min(cap, rows):
            break
    imputer.impute(batches[0].slice(0, 1000))  # warm (first call allocates)
    t = time.perf_counter()
    for b in batches:
        imputer.impute(b)
    seconds = time.perf_counter() - t
    per_row = flops_per_row(imputer, batches[0].slice(0, 10_000))
    rate = matmul_rate(device)
    model_rps = n / seconds
    return {"model_only_rows_per_s": model_rps, "model_only_rows": n, "model_only_seconds": round(seconds, 3),
            "model_only_process": "this process (the launcher's), torch threads " + str(torch.get_num_threads()),
            "model_flops_per_row": round(per_row, 1), "matmul_flops_per_s": round(rate, 1),
            "model_to_machine": round(model_rps * per_row / rate, 4)}


def bf16_check(path: Path, device: str = "cpu", rows: int = 100_000) -> dict:
    """The model in bfloat16 (torch.autocast) against fp32 on the same batches: rows/s of each,
    and the RMSE of the filled cells against letter's true values (the resampled input's holes
    are letter rows' cells, so every filled cell has its true value in letter). bf16 holds when
    the RMSE moves by at most 1e-4."""
    from lakefill.pipelines.launcher import plan_for, prepare
    from lakefill.transforms.impute import Imputer
    from lakefill.transforms.io import iter_raw
    from lakefill.transforms.plan import Runtime, run_steps

    cfg = job(path, CACHE / "bf16-out", "bf16", device=device)
    prep = prepare(cfg, log=lambda *_: None)
    imputer = Imputer(prep.artifact, device=cfg.device)
    head = [s for s in plan_for(prep).steps if s.name in ("detect", "validate_pre")]
    batch = run_steps(head, next(iter(iter_raw(cfg.input, batch_rows=rows))).table, Runtime(lambda: imputer)).table
    truth = _truth(path, rows)
    out = {}
    for precision in ("fp32", "bf16"):  # the job's precision option (Imputer.impute)
        imputer.impute(batch.slice(0, 1000), precision=precision)  # warm
        t = time.perf_counter()
        filled = imputer.impute(batch, precision=precision)
        seconds = time.perf_counter() - t
        out[f"{precision}_rows_per_s"] = batch.num_rows / seconds
        out[f"{precision}_rmse"] = _fill_rmse(filled, truth)
    out["bf16_rmse_change"] = out["bf16_rmse"] - out["fp32_rmse"]
    out["bf16_holds"] = abs(out["bf16_rmse_change"]) <= 1e-4
    out["device"] = "cuda" if str(imputer.device).startswith("cuda") else "cpu"
    return out


def _truth(path: Path, rows: int) -> pa.Table:
    """The resampled input's first ``rows`` rows without holes (``make_input``'s draws again)."""
    base = pacsv.read_csv(LETTER)
    rng = np.random.default_rng(int(path.stem.split("_s")[1].split("_")[0]))
    n = min(100_000, rows)
    take = rng.integers(0, base.num_rows, n)
    return base.take(pa.array(take))


def _fill_rmse(filled: pa.Table, truth: pa.Table) -> float:
    """RMSE over the imputed cells, each column on letter's min-max [0, 1] scale."""
    from lakefill.transforms.impute import IMPUTED, imputed_mask

    n = min(filled.num_rows, truth.num_rows)
    names = [c for c in truth.column_names if c in filled.column_names and pa.types.is_integer(truth.column(c).type)]
    mask = imputed_mask(filled.column(IMPUTED).slice(0, n), names)
    sq, count = 0.0, 0
    for j, c in enumerate(names):
        t = truth.column(c).to_numpy().astype(float)[:n]
        f = filled.column(c).slice(0, n).to_numpy(zero_copy_only=False).astype(float)
        span = (t.max() - t.min()) or 1.0
        m = mask[:, j]
        sq += float((((f[m] - t[m]) / span) ** 2).sum())
        count += int(m.sum())
    return (sq / count) ** 0.5 if count else float("nan")


def no_model_run(engine: str, path: Path, rows: int, args: list[str]) -> float:
    """The stage with imputation and refinement off (the job's ``impute: false``: read, detect,
    validate, write), rows/s, on the same engine."""
    return variant_run(engine, path, rows, args, "no-model", impute=False)


def variant_run(engine: str, path: Path, rows: int, args: list[str], tag: str, **settings) -> float:
    """The stage with the job's ``settings`` changed (``impute: false``, ``refine: false``), rows/s,
    on the same engine, into an output of its own."""
    if engine == "core":  # the loop alone, as the core stage's figure
        return rows / _core_stage(job(path, CACHE / f"core-out-{tag}", tag, **settings))[2]
    out = CACHE / f"{engine}-out-{tag}-{rows}"
    shutil.rmtree(out, ignore_errors=True)  # a run id already in the table would commit nothing
    t = time.perf_counter()
    if engine == "beam":
        from lakefill.pipelines.beam_pipeline import run_beam

        run_beam(job(path, out, tag, **settings), args, log=lambda *_: None)
    else:
        from lakefill.pipelines.spark_job import run_spark

        run_spark(job(path, out, tag, **settings), args, log=lambda *_: None)
    return rows / (time.perf_counter() - t)


def bench_beam(path: Path, rows: int, beam_args: list[str]) -> dict:
    import apache_beam as beam

    from lakefill.pipelines.beam_pipeline import pipeline_options, run_beam
    from lakefill.pipelines.config import JobConfig
    from lakefill.transforms.beam import COUNTERS, FinalizeRun, ReadRaw, WriteToLake

    out = CACHE / f"beam-out-{rows}"
    shutil.rmtree(out, ignore_errors=True)
    # pass-through: the same read and the same lake write + commit, nothing in between
    t = time.perf_counter()
    p = beam.Pipeline(options=pipeline_options(beam_args))
    read = p | "ReadRaw" >> ReadRaw(str(path), batch_rows=JobConfig.model_fields["batch_size"].default)  # as the stage
    parts = read.main | "Write" >> WriteToLake(str(out / "passthrough" / "table"))
    final = FinalizeRun(run_id="passthrough", output=str(out / "passthrough"), config={}, max_quarantine_share=1.0,
                        mode="overwrite", partition_by=[], started=time.time())
    (p | beam.Create([None]) | beam.ParDo(final, parts=beam.pvalue.AsList(parts),
                                          counters=beam.pvalue.AsList(read[COUNTERS])))
    p.run().wait_until_finish()
    passthrough = time.perf_counter() - t
    t = time.perf_counter()
    outcome = run_beam(job(path, out / "stage", "stage"), beam_args, log=lambda *_: None)
    stage = time.perf_counter() - t
    return {"stage_rows_per_s": rows / stage, "passthrough_rows_per_s": rows / passthrough,
            "stage_seconds": stage, "passthrough_seconds": passthrough, "counts": outcome.counts,
            "beam_args": beam_args}


DISCOVERY = ROOT / "benchmarks" / "gpu_discovery.sh"


def gpu_cluster_args(master: str, cores: int, discovery: Path = DISCOVERY) -> list[str]:
    """Spark settings for a standalone cluster whose workers offer their GPUs (``gpu_cluster``):
    one GPU per executor, shared by its ``cores`` task slots (each task asks for 1/cores of it)."""
    return ["--master", master, "--conf", f"spark.executor.cores={cores}",
            "--conf", "spark.executor.resource.gpu.amount=1",
            "--conf", f"spark.executor.resource.gpu.discoveryScript={discovery}",
            "--conf", f"spark.task.resource.gpu.amount={1 / cores:.6g}", "--conf", "spark.ui.enabled=false"]


def gpu_cluster(root: Path, cores: int, discovery: Path = DISCOVERY, extra_env: dict | None = None):
    """A one-worker standalone cluster on 127.0.0.1 whose worker offers the GPUs the discovery
    script finds (``spark.worker.resource.gpu.*``); stop it with ``.stop()``."""
    from lakefill.testing import SparkCluster

    opts = f"-Dspark.worker.resource.gpu.amount=1 -Dspark.worker.resource.gpu.discoveryScript={discovery}"
    return SparkCluster(root, workers=1, cores=cores, worker_opts=opts, extra_env=extra_env)


def bench_spark(path: Path, rows: int, spark_args: list[str]) -> dict:
    from lakefill.pipelines.spark_job import run_spark, spark_session

    out = CACHE / f"spark-out-{rows}"
    shutil.rmtree(out, ignore_errors=True)
    spark = spark_session(spark_args)
    t = time.perf_counter()
    spark.read.parquet(str(path)).write.mode("overwrite").parquet(str(out / "passthrough"))
    passthrough = time.perf_counter() - t
    t = time.perf_counter()
    outcome = run_spark(job(path, out / "stage", "stage"), spark_args, log=lambda *_: None)
    stage = time.perf_counter() - t
    return {"stage_rows_per_s": rows / stage, "passthrough_rows_per_s": rows / passthrough,
            "stage_seconds": stage, "passthrough_seconds": passthrough, "counts": outcome.counts,
            "spark_args": spark_args, "task_gpus": (outcome.metrics or {}).get("spark", {}).get("task_gpus", [])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["beam", "spark", "core"], required=True)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--json")
    ap.add_argument("--store", choices=["local", "s3"], default="local",
                    help="s3: also run the stage with every path on an S3 server on loopback (beam, spark)")
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                    help="where the model runs (gpu: a CUDA GPU torch can see, else refused before any work)")
    ap.add_argument("--spark-gpu-cluster", action="store_true",
                    help="spark: run on a one-worker standalone cluster on 127.0.0.1 whose worker offers its GPU "
                         "(benchmarks/gpu_discovery.sh; spark.task.resource.gpu.amount = 1 / cores); the JSON's "
                         "task_gpus lists the GPU addresses the tasks were given")
    ap.add_argument("--bf16", action="store_true",
                    help="also time the model in bfloat16 (torch.autocast) against fp32 on 100,000 rows and "
                         "check the filled cells' RMSE moves by at most 1e-4 (JSON key bf16)")
    args, extra = ap.parse_known_args(argv)
    if args.store != "local" and args.engine == "core":
        ap.error("--store s3 needs --engine beam or spark (the core benchmark writes no lake)")
    if args.spark_gpu_cluster and args.engine != "spark":
        ap.error("--spark-gpu-cluster needs --engine spark")
    if args.device == "gpu":
        import torch

        if not torch.cuda.is_available():
            ap.error("--device gpu: torch sees no CUDA GPU on this machine (torch.cuda.is_available() is false)")
    DEVICE[0] = args.device
    path = make_input(args.rows)
    model_and_schema()
    if args.engine == "core":
        res = bench_core(path, args.rows)
    elif args.engine == "beam":
        res = bench_beam(path, args.rows, extra)  # default: the Direct runner's defaults (in-memory, one worker)
    elif args.spark_gpu_cluster:
        cores = os.cpu_count() or 1
        cluster = gpu_cluster(CACHE / "gpu-cluster", cores)
        try:
            extra = gpu_cluster_args(cluster.url, cores) + extra
            res = bench_spark(path, args.rows, extra)
            res["spark_gpu_cluster"] = {"master": cluster.url, "cores": cores, "discovery": str(DISCOVERY)}
            res["no_model_rows_per_s"] = no_model_run(args.engine, path, args.rows, extra)
            res["no_refine_rows_per_s"] = variant_run(args.engine, path, args.rows, extra, "no-refine", refine=False)
        finally:
            cluster.stop()
    else:
        res = bench_spark(path, args.rows, extra)
    # the extended figures (same run): the stage without the model, the model alone, the machine
    if "no_model_rows_per_s" not in res:
        res["no_model_rows_per_s"] = no_model_run(args.engine, path, args.rows, extra)
    if "no_refine_rows_per_s" not in res:
        res["no_refine_rows_per_s"] = variant_run(args.engine, path, args.rows, extra, "no-refine", refine=False)
    res.update(model_cost(path, args.rows, args.device))
    if args.bf16:
        res["bf16"] = bf16_check(path, args.device, min(args.rows, 100_000))
    if args.store != "local":
        res.update(bench_store(args.engine, path, args.rows, extra))
        res["store"] = args.store
        res["store_ratio"] = round(res["store_stage_rows_per_s"] / res["local_warm_stage_rows_per_s"], 3)
    passthrough = res.pop("passthrough_rows_per_s", None)
    out = {"engine": args.engine, "rows": args.rows, "stage_rows_per_s": round(res.pop("stage_rows_per_s"), 1),
           "passthrough_rows_per_s": None if passthrough is None else round(passthrough, 1),
           "ratio": None,
           "machine": machine(), **res}
    out["device"] = args.device
    if passthrough is not None:
        out["ratio"] = round(out["stage_rows_per_s"] / passthrough, 3)
        out["no_model_to_passthrough"] = round(out["no_model_rows_per_s"] / passthrough, 3)
    out["stage_to_model"] = round(out["stage_rows_per_s"] / out["model_only_rows_per_s"], 3)
    out["no_refine_to_model"] = round(out["no_refine_rows_per_s"] / out["model_only_rows_per_s"], 3)
    print(f"engine {out['engine']}, {out['rows']:,} rows, on {out['machine']}")
    print(f"  stage        : {out['stage_rows_per_s']:>12,.0f} rows/s")
    if passthrough is not None:
        print(f"  pass-through : {passthrough:>12,.0f} rows/s")
        print(f"  ratio        : {out['ratio']:>12.3f}")
    if out.get("store_stage_rows_per_s"):
        print(f"  stage on {out['store']:<5}: {out['store_stage_rows_per_s']:>12,.0f} rows/s "
              f"({out['store_ratio']:.2f}x the stage on local disk run after it: "
              f"{out['local_warm_stage_rows_per_s']:,.0f} rows/s)")
    print(f"  no model     : {out['no_model_rows_per_s']:>12,.0f} rows/s (impute: false)"
          + (f", {out['no_model_to_passthrough']:.3f}x the pass-through" if passthrough is not None else ""))
    print(f"  no refine    : {out['no_refine_rows_per_s']:>12,.0f} rows/s (refine: false), "
          f"{out['no_refine_to_model']:.3f}x the model alone")
    print(f"  model alone  : {out['model_only_rows_per_s']:>12,.0f} rows/s on {out['device']} "
          f"(the stage is {out['stage_to_model']:.3f}x it); {out['model_flops_per_row']:,.0f} FLOPs/row, "
          f"{out['model_to_machine']:.3f}x the machine's matmul rate ({out['matmul_flops_per_s'] / 1e9:,.1f} GFLOP/s)")
    if out.get("bf16"):
        b = out["bf16"]
        print(f"  bf16 vs fp32 : {b['bf16_rows_per_s']:>12,.0f} vs {b['fp32_rows_per_s']:,.0f} rows/s on {b['device']}; "
              f"RMSE {b['bf16_rmse']:.5f} vs {b['fp32_rmse']:.5f} ({'holds' if b['bf16_holds'] else 'does not hold'} to 1e-4)")
    for k in ("impute_rows_per_s", "impute_rows_per_s_per_core", "reverse_rows_per_s"):
        if out.get(k):
            print(f"  {k:<27}: {out[k]:>12,.0f}")
    if out.get("adapt"):
        a = out["adapt"]
        print(f"  with adapt: true: adaptation {a['adapt_seconds']} s on {a['rows_fitted']} rows "
              f"({'used' if a['used'] else 'refused by its check rows'}); stage {a['stage_rows_per_s']:,.0f} rows/s"
              + (f", refine {a['reverse_rows_per_s']:,.0f} rows/s" if a.get("reverse_rows_per_s") else ""))
    for k, v in (out.get("baselines_rows_per_s") or {}).items():
        print(f"  baseline {k:<18}: {v:>12,.0f} rows/s (20,000-row slice)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
