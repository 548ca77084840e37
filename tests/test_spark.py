"""The Spark stage: real Spark on local[2], and on a real standalone cluster started on 127.0.0.1."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import DeltaTable

from conftest import EXAMPLES, ROOT, demo_job
from lakefill.pipelines.beam_pipeline import run_beam
from lakefill.pipelines.spark_job import parse_spark_args, run_spark
from lakefill.errors import ConfigError
from lakefill.testing import SparkCluster
from lakefill.transforms.io import ROW_ID, read_raw

pytestmark = pytest.mark.slow
ROWS = 602
BAD = {600, 601}


def _read(uri):
    return DeltaTable(str(uri)).to_pyarrow_table().sort_by(ROW_ID)


def _same_table(a: pa.Table, b: pa.Table, *, skip=("_lf_run_id",)):
    assert a.column_names == b.column_names
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        if name in skip:
            continue
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), rtol=1e-6, atol=1e-6, err_msg=name)
        else:
            assert x.to_pylist() == y.to_pylist(), name


@pytest.fixture(scope="module")
def spark_run(demo_model, spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spark")
    cfg = demo_job(tmp, demo_model, batch_size=100, run_id="s1")
    return cfg, run_spark(cfg, spark=spark, log=lambda *_: None)


def test_local_spark_run_writes_every_row_once(spark_run):
    cfg, outcome = spark_run
    table, quarantine = _read(outcome.table), _read(outcome.quarantine)
    ids = table.column(ROW_ID).to_pylist()
    assert len(ids) == len(set(ids)) == ROWS - len(BAD) and set(ids) | BAD == set(range(ROWS))
    q = dict(zip(quarantine.column(ROW_ID).to_pylist(), quarantine.column("reason").to_pylist()))
    assert set(q) == BAD and "ragged row" in q[600] and "expect_column_values_to_be_in_set(region)" in q[601]
    report = json.loads(Path(outcome.report).read_text())
    assert report["engine"] == "spark" and report["counts"]["rows_in"] == ROWS
    assert report["counts"]["disguised_nulls_replaced"]["blood_pressure"] > 0
    assert report["counts"]["cells_imputed"] > 0


def test_spark_rerun_with_the_same_run_id_commits_nothing(spark_run, spark):
    cfg, outcome = spark_run
    versions = DeltaTable(outcome.table).version(), DeltaTable(outcome.quarantine).version()
    again = run_spark(cfg, spark=spark, log=lambda *_: None)
    assert not again.committed
    assert (DeltaTable(outcome.table).version(), DeltaTable(outcome.quarantine).version()) == versions
    assert _read(outcome.table).num_rows == ROWS - len(BAD)
    assert {p.name for p in Path(outcome.table).rglob("*.parquet")} == {
        u.split("/")[-1] for u in DeltaTable(outcome.table).file_uris()}


def test_beam_and_spark_write_the_same_table_and_quarantine(spark_run, demo_model, tmp_path):
    cfg, outcome = spark_run
    beam = run_beam(demo_job(tmp_path, demo_model, batch_size=64, run_id="b1"), [], log=lambda *_: None)
    _same_table(_read(outcome.table), _read(beam.table))
    q_spark, q_beam = _read(outcome.quarantine), _read(beam.quarantine)
    _same_table(q_spark, q_beam)


def test_spark_arguments_are_checked():
    assert parse_spark_args(["--master", "local[2]", "--conf", "a.b=1"]) == ("local[2]", {"a.b": "1"})
    with pytest.raises(ConfigError, match="--bogus"):
        parse_spark_args(["--bogus"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_spark_args(["--conf", "novalue"])


# -- a real standalone cluster: one master, two workers, each its own process -------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SparkCluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.stop()


def _parquet_job(tmp_path, model, run_id, rows_per_group=25):
    raw = read_raw(EXAMPLES / "customers.csv").table.drop_columns([ROW_ID])
    pq.write_table(raw, tmp_path / "customers.parquet", row_group_size=rows_per_group)
    cfg = {"input": str(tmp_path / "customers.parquet"), "schema": str(EXAMPLES / "customers.schema.yaml"),
           "model": str(model), "output": str(tmp_path / "out"), "run_id": run_id, "batch_size": rows_per_group}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, raw.num_rows


def _submit(job: Path, cluster: SparkCluster, tmp_path: Path):
    """The job as spark-submit would run it: its own driver process, against the cluster."""
    log = open(tmp_path / "driver.log", "w")
    return subprocess.Popen([sys.executable, "-m", "lakefill.pipelines.spark_job", str(job), "--master", cluster.url,
                             "--conf", "spark.executor.cores=1", "--conf", "spark.task.maxFailures=4",
                             "--conf", "spark.ui.enabled=false"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=cluster.env)


@pytest.mark.cluster
def test_standalone_cluster_runs_the_job_with_the_model_on_both_executors(cluster, demo_model, tmp_path):
    job, n = _parquet_job(tmp_path, demo_model, "c1")
    proc = _submit(job, cluster, tmp_path)
    assert proc.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-4000:]
    report = json.loads((tmp_path / "out" / "reports" / "c1" / "report.json").read_text())
    folders = report["metrics"]["spark"]["executor_folders"]
    assert report["metrics"]["spark"]["spark_master"] == cluster.url
    assert len({Path(f).parent.name for f in folders}) == 1 and len(folders) == 2, folders  # one app, two executors
    table, quarantine = _read(tmp_path / "out" / "table"), _read(tmp_path / "out" / "quarantine")
    assert table.num_rows + quarantine.num_rows == n == report["counts"]["rows_in"]
    assert sorted(table.column(ROW_ID).to_pylist() + quarantine.column(ROW_ID).to_pylist()) == list(range(n))


@pytest.mark.cluster
def test_tasks_get_the_gpu_their_worker_discovered(demo_model, tmp_path):
    """The GPU set of protocol D (benchmarks/gpu.sh): a worker that offers a GPU (its discovery
    script; here told the address, as this machine has none) and tasks that each ask for a share
    of it: every task of the job ran holding GPU 0, and the report says so."""
    from benchmarks.throughput import gpu_cluster, gpu_cluster_args

    cluster = gpu_cluster(tmp_path / "cluster", cores=2, extra_env={"LAKEFILL_GPU_ADDRESSES": "0"})
    try:
        job, n = _parquet_job(tmp_path, demo_model, "gpu")
        log = open(tmp_path / "driver.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "lakefill.pipelines.spark_job", str(job),
                                 *gpu_cluster_args(cluster.url, 2)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=cluster.env)
        assert proc.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-4000:]
    finally:
        cluster.stop()
    report = json.loads((tmp_path / "out" / "reports" / "gpu" / "report.json").read_text())
    assert report["metrics"]["spark"]["task_gpus"] == ["0"] and report["counts"]["rows_in"] == n
    assert "spark.task.resource.gpu.amount=0.5" in gpu_cluster_args("spark://x:1", 2)


@pytest.mark.cluster
def test_a_worker_killed_mid_job_writing_to_s3_loses_and_duplicates_nothing(cluster, demo_model, tmp_path, s3):
    """Input, model and output only on the S3 server (each worker has its own work folder, no
    shared disk); one worker is killed while tasks write their parts: Spark's retry completes
    the job, and every row is in the table or the quarantine once."""
    from lakefill.transforms.lake import read_lake
    from lakefill.transforms.storage import Location

    local_job, n = _parquet_job(tmp_path, demo_model, "c2", rows_per_group=20)
    lake = s3.bucket("cluster")
    Location(f"{lake}/raw/customers.parquet", s3.options).upload(tmp_path / "customers.parquet")
    Location(f"{lake}/models/customers", s3.options).upload(demo_model)
    cfg = yaml.safe_load(local_job.read_text())
    cfg.update({"input": f"{lake}/raw/customers.parquet", "model": f"{lake}/models/customers",
                "output": f"{lake}/out", "storage_options": s3.options})
    job = tmp_path / "s3-job.yaml"
    job.write_text(yaml.safe_dump(cfg))
    proc = _submit(job, cluster, tmp_path)
    parts = Location(f"{lake}/out/table", s3.options)
    end = time.time() + 300
    while time.time() < end and sum(f.name.endswith(".parquet") for f in parts.walk()) < 2:  # tasks are under way
        assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-4000:]
        time.sleep(0.2)
    cluster.kill_worker(0)
    assert proc.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-4000:]
    table = read_lake(parts).sort_by(ROW_ID)
    quarantine = read_lake(Location(f"{lake}/out/quarantine", s3.options))
    ids = sorted(table.column(ROW_ID).to_pylist() + quarantine.column(ROW_ID).to_pylist())
    assert ids == list(range(n))  # every row once: none lost, none twice
    report = json.loads(Location(f"{lake}/out/reports/c2/report.json", s3.options).read_text())
    assert report["committed"] and report["counts"]["rows_in"] == n
    assert not (tmp_path / "out").exists()  # nothing of the run on local disk
    folders = report["metrics"]["spark"]["executor_folders"]
    assert all(str(cluster.root) in f for f in folders)  # the executors ran in the workers' own folders


def test_the_dataframe_functions_one_by_one_give_what_the_fused_job_gives(spark, demo_model, tmp_path):
    from lakefill.pipelines.launcher import prepare
    from lakefill.transforms import spark as lf
    from lakefill.transforms.impute import Imputer
    from lakefill.transforms.plan import stage_plan

    prep = prepare(demo_job(tmp_path, demo_model), log=lambda *_: None)
    columns = [c for c in prep.sample.table.column_names if c != ROW_ID]
    schemas = lf.stage_schemas(columns, prep.schema, prep.policy, Imputer(prep.artifact, device="cpu"))
    model = lf.broadcast_model(spark, demo_model, prep.schema, device="cpu")
    raw = lf.read_raw(spark, str(EXAMPLES / "customers.csv"), schemas.raw, batch_rows=128)
    df = lf.detect_disguised_nulls(raw, prep.policy, prep.schema, schemas.typed)
    df = lf.validate(df, prep.schema, "pre", schemas.typed)
    df = lf.impute(df, model, schemas.imputed)
    df = lf.refine(df, model, schemas.imputed, threshold=0.5)
    df = lf.validate(df, prep.schema, "post", schemas.imputed)
    good, bad = lf.split_quarantine(lf.with_run_id_df(df, "x", schemas.final))
    plan = stage_plan(schema=prep.schema, policy=prep.policy, run_id="x", confidence_threshold=0.5)
    good2, bad2 = lf.split_quarantine(lf.fused(raw, schemas.final, plan.steps, model=model))
    a = good.toPandas().sort_values(ROW_ID).reset_index(drop=True)
    b = good2.toPandas().sort_values(ROW_ID).reset_index(drop=True)
    assert len(a) == ROWS - len(BAD) and list(a[ROW_ID]) == list(b[ROW_ID])
    np.testing.assert_allclose(a["income"], b["income"], rtol=1e-6)
    assert a["_lf_method"].tolist() == b["_lf_method"].tolist()
    # the refine step re-worked rows (their held-back check is set) the same way in both
    assert a["_lf_check_before"].notna().any()
    np.testing.assert_allclose(a["_lf_check_before"].astype(float), b["_lf_check_before"].astype(float), rtol=1e-6)
    np.testing.assert_allclose(a["_lf_check_after"].astype(float), b["_lf_check_after"].astype(float), rtol=1e-6)
    assert sorted(r[ROW_ID] for r in bad.collect()) == sorted(r[ROW_ID] for r in bad2.collect()) == sorted(BAD)
    counters = lf.Counters.create(spark)  # counted once per action that computes the DataFrame: one here
    assert lf.fused(raw, schemas.final, plan.steps, model=model, counters=counters).count() == ROWS
    assert counters.value["validation:pre:rows_failed"] == 1 and counters.value["rows_in"] == 0  # read_raw had none
    assert counters.value["cells_imputed"] == int(a["_lf_imputed"].map(len).sum()) > 0
    # the last function: the executors write the parts, one commit per table on the driver makes them the table
    from lakefill.transforms.lake import commit, read_lake
    from lakefill.transforms.stage import Parts

    written = lf.write_lake(lf.with_run_id_df(df, "x", schemas.final), str(tmp_path / "t"), str(tmp_path / "q"), "x",
                            schemas.final)
    parts = [Parts.from_dict(json.loads(r["parts"])) for r in written.collect()]
    commit(tmp_path / "t", [x for p in parts for x in p.table_actions], schemas.final, run_id="x")
    lake = read_lake(tmp_path / "t").to_pandas().sort_values(ROW_ID).reset_index(drop=True)
    assert list(lake[ROW_ID]) == list(a[ROW_ID])
    np.testing.assert_allclose(lake["income"], a["income"], rtol=1e-6)
    held = sum(n for p in parts for k, n in p.counters.items() if k.startswith("rows_quarantined:"))
    assert held == len(BAD) and sum(len(p.quarantine_actions) for p in parts) >= 1


@pytest.fixture(scope="module")
def packed_env(tmp_path_factory):
    """deploy/spark/package.sh as a user runs it: a fresh venv with the pinned lock and lakefill, packed.
    LAKEFILL_PACKED_ENV=PATH reuses an archive that package.sh built before (to iterate on the test)."""
    if os.environ.get("LAKEFILL_PACKED_ENV"):
        return Path(os.environ["LAKEFILL_PACKED_ENV"])
    out = tmp_path_factory.mktemp("packed") / "lakefill-env.tar.gz"
    done = subprocess.run(["bash", str(ROOT / "deploy" / "spark" / "package.sh"), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.cluster
def test_the_packed_environment_runs_the_job_on_the_cluster(cluster, packed_env, demo_model, tmp_path):
    """deploy/spark/submit.py --env: the executors unpack the archive and run its Python, not this one."""
    job, n = _parquet_job(tmp_path, demo_model, "packed")
    spark_submit = Path(sys.executable).parent / "spark-submit"
    done = subprocess.run([sys.executable, str(ROOT / "deploy" / "spark" / "submit.py"), str(job), "--master",
                           cluster.url, "--env", str(packed_env), "--spark-submit", str(spark_submit),
                           "--conf", "spark.executor.cores=1", "--conf", "spark.ui.enabled=false"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=cluster.env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "reports" / "packed" / "report.json").read_text())
    pythons, folders = report["metrics"]["spark"]["executor_pythons"], report["metrics"]["spark"]["executor_folders"]
    assert pythons and all(Path(p).name == "environment" for p in pythons), pythons
    assert all(Path(p).parent in {Path(f) for f in folders} for p in pythons), (pythons, folders)
    assert sys.prefix not in pythons
    table, quarantine = _read(tmp_path / "out" / "table"), _read(tmp_path / "out" / "quarantine")
    assert sorted(table.column(ROW_ID).to_pylist() + quarantine.column(ROW_ID).to_pylist()) == list(range(n))


def test_a_first_run_trains_on_a_sample_the_executors_drew(spark, tmp_path):
    """train_if_missing on Spark: each task keeps its bottom-k, the driver merges them: the rows the
    local sampler draws; the model records the sample."""
    from lakefill.pipelines.spark_job import run_spark
    from lakefill.transforms import spark as lf
    from lakefill.transforms.sample import read_sample

    local, _ = read_sample(EXAMPLES / "customers.csv", train_rows=300, seed=2)
    drawn, info = lf.sample_rows(spark, str(EXAMPLES / "customers.csv"), train_rows=300, seed=2, batch_rows=64,
                                 min_tasks=4)
    assert drawn.table.equals(local.table) and (info.rows, info.seed) == (300, 2) and info.input_rows == read_raw(EXAMPLES / "customers.csv").table.num_rows
    cfg = demo_job(tmp_path, tmp_path / "model", train_if_missing=True,
                   training={"train_rows": 300, "seed": 2, "without": ["gaussian", "trees", "chained", "donors"]})
    lines = []
    outcome = run_spark(cfg, spark=spark, log=lines.append)
    assert outcome.committed and any("drawn by Spark" in str(line) for line in lines)
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["metrics"]["training_sample"]["rows"] == 300 and manifest["metrics"]["rows"] <= 300
    assert manifest["config"]["random_state"] == 2


def test_a_first_run_trains_the_networks_with_torch_distributor(spark, tmp_path):
    """training.trainer: torch_distributor: the networks train as 2 DDP ranks (gloo) in Spark
    barrier tasks on their parts of the sample; the model has the same format and held-out
    check, and predicts about as well as one trained in one process on the same sample."""
    from lakefill.pipelines.spark_job import run_spark
    from lakefill.models.training import fit_model
    from lakefill.pipelines.launcher import training_rows
    from lakefill.schema import load_schema

    training = {"train_rows": 300, "seed": 2, "without": ["gaussian", "trees", "chained", "donors"]}
    cfg = demo_job(tmp_path, tmp_path / "model", train_if_missing=True,
                   training={**training, "trainer": "torch_distributor", "processes": 2})
    lines = []
    outcome = run_spark(cfg, spark=spark, log=lines.append)
    assert outcome.committed and outcome.counts["rows_in"] == 602
    assert any("networks trained by TorchDistributor on 2 executor processes" in str(line) for line in lines)
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    metrics = manifest["metrics"]
    assert metrics["trainer"] == {"trainer": "torch_distributor", "processes": 2, "backend": "gloo"}
    assert metrics["training_sample"]["rows"] == 300 and len(metrics["networks"]) == 2
    # the same sample and seed trained in this process: the held-out losses are close (not equal:
    # each DDP step averages two half-batches' gradients and the hidden cells are drawn per rank)
    schema = load_schema(EXAMPLES / "customers.schema.yaml")
    _, _, good, _, _ = training_rows(EXAMPLES / "customers.csv", schema, sample_rows=cfg.sample_rows, train_rows=300, seed=2)
    single = fit_model(good, schema, config=cfg.ae_config())
    assert single.metrics["trainer"] == {"trainer": "local"}
    for ddp, one in zip(metrics["networks"], single.metrics["networks"]):
        assert abs(ddp["val_loss"] - one["val_loss"]) < 0.15 * one["val_loss"], (ddp, one)


def test_torch_distributor_is_refused_off_spark_and_beyond_the_task_slots(spark, tmp_path, capsys):
    from lakefill.errors import ConfigError
    from lakefill.pipelines.cli import main
    from lakefill.pipelines.local_job import run_local
    from lakefill.pipelines.spark_job import run_spark

    cfg = demo_job(tmp_path, tmp_path / "model", train_if_missing=True, training={"trainer": "torch_distributor"})
    with pytest.raises(ConfigError, match="training.trainer: torch_distributor trains on Spark's executors, and this job "
                                          "runs on local"):
        run_local(cfg, log=lambda *_: None)
    too_many = demo_job(tmp_path, tmp_path / "model", train_if_missing=True,
                        training={"trainer": "torch_distributor", "processes": 3})
    with pytest.raises(ConfigError, match="training.processes is 3 but Spark has 2 task slots"):
        run_spark(too_many, spark=spark, log=lambda *_: None)
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({**cfg.model_dump(by_alias=True, exclude_none=True), "training": {"trainer": "torch_distributor"}}))
    assert main(["train", "--job", str(job)]) == 2
    assert "training.trainer: torch_distributor trains on Spark's executors, and `lakefill train` trains here" in capsys.readouterr().err
    with pytest.raises(Exception, match="processes"):
        demo_job(tmp_path, tmp_path / "model", training={"trainer": "torch_distributor", "processes": 0})
    assert not (tmp_path / "model").exists() and not (tmp_path / "out").exists()  # nothing done
