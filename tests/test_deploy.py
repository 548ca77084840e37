"""Deployment files: what can be checked here is checked (Dataflow template, spark-submit, Airflow)."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import apache_beam
import pytest

from conftest import EXAMPLES, ROOT, demo_job
from lakefill.pipelines.beam_pipeline import config_from_flags
from lakefill.pipelines.config import JobConfig

DEPLOY = ROOT / "deploy"
AIRFLOW_VENV = ROOT / ".venv-airflow"


def test_flex_template_metadata_has_every_job_parameter_with_help_and_regexes():
    meta = json.loads((DEPLOY / "dataflow" / "metadata.json").read_text())
    names = [p["name"] for p in meta["parameters"]]
    fields = [f.alias or n for n, f in JobConfig.model_fields.items()]
    assert sorted(names) == sorted(["job", "task", *fields])
    for p in meta["parameters"]:
        assert p["helpText"].strip() and p["label"].strip(), p["name"]
        assert p["regexes"], p["name"]
        for rx in p["regexes"]:
            re.compile(rx)
    rx = {p["name"]: re.compile(p["regexes"][0]) for p in meta["parameters"]}
    assert rx["run_id"].fullmatch("2026-11-22") and not rx["run_id"].fullmatch("bad id")
    assert rx["confidence_threshold"].fullmatch("0.15") and not rx["confidence_threshold"].fullmatch("1.5")
    assert rx["mode"].fullmatch("overwrite_partitions") and not rx["mode"].fullmatch("merge")
    assert {p["name"] for p in meta["parameters"] if not p["isOptional"]} == {"input", "model", "output"}


def test_the_pipeline_accepts_the_template_parameters_as_flags(tmp_path):
    cfg, beam_args = config_from_flags([
        f"--input={EXAMPLES / 'customers.csv'}", "--model=/m", f"--output={tmp_path}", "--run_id=r9",
        "--confidence_threshold=0.3", "--partition_by=region,segment", "--refine=false", "--runner=DataflowRunner",
        "--project=p"])
    assert cfg.run_id == "r9" and cfg.confidence_threshold == 0.3 and cfg.partition_by == ["region", "segment"]
    assert cfg.refine is False and beam_args == ["--runner=DataflowRunner", "--project=p"]
    # an engine's flag is never taken for a job field it abbreviates (--conf is not --confidence_threshold)
    cfg, rest = config_from_flags([f"--input={EXAMPLES / 'customers.csv'}", "--model=/m", "--output=/o",
                                   "--conf", "spark.ui.enabled=false"])
    assert rest == ["--conf", "spark.ui.enabled=false"]
    assert cfg.confidence_threshold == JobConfig.model_fields["confidence_threshold"].default


def test_dockerfile_uses_the_projects_beam_version_and_python():
    text = (DEPLOY / "dataflow" / "Dockerfile").read_text()
    base = re.search(r"^FROM apache/beam_python(\d\.\d+)_sdk:(\S+)", text, re.M)
    assert base, "the image must start from the Beam Python SDK image"
    assert base.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}"
    lock = re.search(r"^apache-beam==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M).group(1)
    assert base.group(2) == lock == apache_beam.__version__
    assert "python_template_launcher" in text and "FLEX_TEMPLATE_PYTHON_PY_FILE" in text


def test_submit_builds_a_spark_submit_command_line():
    from deploy.spark.submit import build_command

    cmd = build_command("job.yaml", master="spark://h:7077", run_id="r1", env_archive="env.tar.gz",
                        conf={"spark.executor.instances": "4"})
    assert cmd[:3] == ["spark-submit", "--master", "spark://h:7077"]
    assert cmd[cmd.index("--archives") + 1] == "env.tar.gz#environment"
    confs = dict(c.split("=", 1) for c in cmd[1::1] if "=" in c and c.startswith("spark."))
    assert confs["spark.pyspark.python"] == "./environment/bin/python" and confs["spark.executor.instances"] == "4"
    assert cmd[-4:] == [str(ROOT / "pipelines" / "spark_job.py"), "job.yaml", "--run-id", "r1"]
    with pytest.raises(ValueError):
        build_command("j", master="local", deploy_mode="yarn")


@pytest.mark.slow
def test_the_submit_command_runs_the_job_with_the_real_spark_submit(demo_model, tmp_path):
    import yaml

    cfg = demo_job(tmp_path, demo_model, run_id="submitted").model_dump(by_alias=True)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(cfg))
    spark_submit = Path(sys.executable).parent / "spark-submit"
    out = subprocess.run([sys.executable, str(DEPLOY / "spark" / "submit.py"), str(job), "--master", "local[2]",
                          "--spark-submit", str(spark_submit), "--conf", "spark.ui.enabled=false"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert shlex.split(out.stdout.splitlines()[0])[0] == str(spark_submit)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["committed"] and result["counts"]["rows_written"] == 600


def _airflow(tmp_path: Path, spec: dict, extra_env: dict, *, run: bool) -> dict:
    """``deploy/airflow/check_dag.py`` in Airflow's own environment; what it saw."""
    python = AIRFLOW_VENV / "bin" / "python"
    assert python.exists(), f"Airflow's own environment {AIRFLOW_VENV} is missing: `make airflow-venv` builds it"
    home = tmp_path / "airflow-home"
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(DEPLOY / "airflow" / "dags"), "PYTHONPATH": "",
           # the Airflow worker's PATH has a Spark client (pyspark's spark-submit) as it would in production
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra_env}
    subprocess.run([str(AIRFLOW_VENV / "bin" / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=600)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = subprocess.run([str(python), str(DEPLOY / "airflow" / "check_dag.py"), str(tmp_path / "spec.json"),
                          *(["--run"] if run else [])], env=env, capture_output=True, text=True, timeout=1800)
    (tmp_path / "airflow.log").write_text(out.stdout + out.stderr)  # every task's log: dag.test() prints them
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, out.stdout[-4000:] + out.stderr[-4000:]
    seen = json.loads(lines[-1])
    assert seen["import_errors"] == {} and seen["graph_ok"], seen
    assert out.returncode == 0, (seen.get("runs"), f"the tasks' logs: {tmp_path / 'airflow.log'}")
    return seen


RENDER = {"engine": "dataflow", "job": "gs://b/jobs/customers.yaml", "input": "gs://b/raw/customers.csv",
          "schema": "gs://b/schemas/customers.yaml", "model": "gs://b/models/customers", "output": "gs://b/lake",
          "run_id": "2026-11-30", "storage_options": {"GOOGLE_PROJECT_ID": "p"},
          "job_options": {"partition_by": ["region", "segment"], "refine": False, "confidence_threshold": 0.4},
          "python": "/opt/lakefill/env/bin/python", "spark_conf": {"spark.executor.instances": "4"},
          "spark_env_archive": "s3://b/envs/lakefill-env.tar.gz", "storage_conn_id": "google_cloud_default",
          "dataflow_options": {"project": "p", "region": "europe-west1", "template": "gs://b/templates/lakefill.json",
                               "image": "europe-docker.pkg.dev/p/r/lakefill:1", "temp_location": "gs://b/tmp",
                               "service_account": "lakefill@p.iam.gserviceaccount.com",
                               "environment": {"maxWorkers": 8}}}


def _check_rendered(seen: dict, master: str) -> None:
    """Every param reaches the task that needs it, in the shape its engine takes."""
    from deploy.dataflow.launch import check_parameters

    flags = {"job": RENDER["job"], "input": RENDER["input"], "schema": RENDER["schema"], "model": RENDER["model"],
             "output": RENDER["output"], "run_id": "2026-11-30", "partition_by": "region,segment", "refine": "false",
             "confidence_threshold": "0.4", "storage_options": '{"GOOGLE_PROJECT_ID": "p"}'}
    for task in ("train", "run"):
        lp = seen["dataflow"][task]["launchParameter"]
        assert lp["parameters"] == {**flags, "task": task}
        check_parameters(lp["parameters"])  # the template's own metadata accepts them (names, patterns)
        assert lp["containerSpecGcsPath"] == RENDER["dataflow_options"]["template"]
        assert lp["environment"] == {"tempLocation": "gs://b/tmp", "sdkContainerImage": RENDER["dataflow_options"]["image"],
                                     "serviceAccountEmail": RENDER["dataflow_options"]["service_account"],
                                     "maxWorkers": 8}
        spark = seen[f"spark_{task}"]
        assert spark[:3] == ["spark-submit", "--master", master]
        conf = dict(spark[i + 1].split("=", 1) for i, w in enumerate(spark) if w == "--conf")
        assert conf["spark.archives"] == RENDER["spark_env_archive"] + "#environment"
        assert conf["spark.pyspark.python"] == "./environment/bin/python"
        assert conf["spark.pyspark.driver.python"] == RENDER["python"] and conf["spark.executor.instances"] == "4"
        app = spark.index(str(DEPLOY / "airflow" / "dags" / "lakefill_entry" / "spark_main.py"))
        assert spark[app + 1:] == ["--task", task, *[f"--{k}={v}" for k, v in flags.items()]]
        beam = seen[f"beam_{task}"]
        assert beam[:2] == [RENDER["python"], str(DEPLOY / "airflow" / "dags" / "lakefill_entry" / "beam_main.py")]
        assert {f"--{k}={v}" for k, v in flags.items()} | {f"--task={task}", "--runner=DirectRunner"} <= set(beam)


@pytest.mark.slow
@pytest.mark.cluster
def test_the_airflow_dag_runs_on_beam_and_on_a_spark_cluster_against_the_s3_server(s3, tmp_path):
    """The DAG as Airflow runs it (``dag.test()``): the job config and the data on the S3
    server, the model trained as a Beam job when missing, a Beam Direct run, then a spark-submit
    to a standalone cluster; the report read back from the lake; the table's Asset emitted."""
    import yaml

    from lakefill.testing import SparkCluster
    from lakefill.transforms.storage import Location

    root = s3.bucket("airflow-dag")
    Location(f"{root}/jobs/customers.csv", s3.options).upload(EXAMPLES / "customers.csv")
    Location(f"{root}/jobs/customers.schema.yaml", s3.options).upload(EXAMPLES / "customers.schema.yaml")
    Location(f"{root}/jobs/customers.yaml", s3.options).write_text(yaml.safe_dump(
        {"input": "customers.csv", "schema": "customers.schema.yaml", "mode": "append", "train_time_budget": 30}))
    keys = {k: v for k, v in s3.options.items() if k.startswith("AWS_")}  # the engines' environment
    public = {k: v for k, v in s3.options.items() if "KEY" not in k}  # no secret on a command line
    cluster = SparkCluster(tmp_path / "cluster", workers=1, extra_env=keys)
    try:
        env = {**keys, "SPARK_LOCAL_IP": "127.0.0.1",
               "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": cluster.url,
                                                         "extra": {"deploy-mode": "client"}}),
               "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws", "login": keys["AWS_ACCESS_KEY_ID"],
                                                       "password": keys["AWS_SECRET_ACCESS_KEY"],
                                                       "extra": {"endpoint_url": s3.endpoint,
                                                                 "region_name": "us-east-1"}})}
        base = {"job": f"{root}/jobs/customers.yaml", "model": f"{root}/models/customers", "output": f"{root}/lake",
                "storage_options": public, "python": sys.executable, "storage_conn_id": "aws_default",
                "train_if_needed": True}
        runs = [{**base, "engine": "beam-local", "run_id": "airflow-beam"},
                {**base, "engine": "spark", "run_id": "airflow-spark",
                 "spark_conf": {"spark.executor.cores": "1", "spark.ui.enabled": "false"}}]
        seen = _airflow(tmp_path, {"render": RENDER, "runs": runs}, env, run=True)
    finally:
        cluster.stop()
    _check_rendered(seen["rendered"], cluster.url)
    beam, spark = seen["runs"]
    assert beam["task_states"]["train_beam_local"] == beam["task_states"]["run_beam_local"] == "success", beam
    assert beam["task_states"]["run_spark"] == beam["task_states"]["train_dataflow"] == "skipped", beam
    assert spark["task_states"]["train_spark"] == spark["task_states"]["run_spark"] == "success", spark
    assert spark["task_states"]["run_beam_local"] == "skipped", spark
    for run, engine in ((beam, "beam"), (spark, "spark")):
        assert run["task_states"]["check_report"] == "success", run
        (event,) = run["asset_events"]
        assert event["uri"] == f"{root}/lake/table" and event["extra"]["rows_written"] == 600
        report = json.loads(Location(f"{root}/lake/reports/{event['extra']['run_id']}/report.json",
                                     s3.options).read_text())
        assert report["engine"] == engine and report["committed"]
        assert report["config"]["model"] == f"{root}/models/customers"
    # the model was trained once, by the Beam job (the Spark run's training task found it)
    assert Location(f"{root}/models/customers/manifest.json", s3.options).exists()
    assert "SECRET" not in json.dumps(seen["rendered"])


def test_the_flex_template_launch_request_keeps_list_values_and_uris_whole(capsys):
    """The rendered launch (REST body and gcloud command), no network: a partition list with a
    comma stays one value, gs:// paths pass the template's patterns, a bad value is refused."""
    from deploy.dataflow.launch import LaunchError, gcloud_command, launch_request, main

    params = {"input": "gs://b/raw/customers.csv", "model": "gs://b/models/customers", "output": "gs://b/lake/c",
              "run_id": "2026-11-30", "partition_by": "region,segment", "storage_options": '{"X": "1"}'}
    req = launch_request(template="gs://b/templates/lakefill.json", params=params, image="r/lakefill:1",
                         job_name="lf-1", gpu="nvidia-tesla-t4")
    lp = req["launchParameter"]
    assert lp["parameters"]["partition_by"] == "region,segment" and lp["containerSpecGcsPath"].startswith("gs://")
    assert lp["environment"]["sdkContainerImage"] == "r/lakefill:1"
    assert lp["environment"]["dataflowServiceOptions"] == ["worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"]
    cmd = gcloud_command(req, project="p", region="r")
    value = cmd[cmd.index("--parameters") + 1]
    assert value.startswith("^~^") and "~partition_by=region,segment~" in value + "~"
    assert dict(kv.split("=", 1) for kv in value[3:].split("~"))["output"] == "gs://b/lake/c"
    # the flags the pipeline gets back from those parameters: the list is a list again
    from lakefill.pipelines.beam_pipeline import config_from_flags

    cfg, _ = config_from_flags([f"--{k}={v}" for k, v in params.items() if k != "storage_options"])
    assert cfg.partition_by == ["region", "segment"] and cfg.output == "gs://b/lake/c"
    for bad, why in (({**params, "mode": "merge"}, "mode='merge'"), ({**params, "colour": "x"}, "unknown"),
                     ({k: v for k, v in params.items() if k != "model"}, "missing required"),
                     ({**params, "input": "gs://b/a b.csv"}, "input=")):
        with pytest.raises(LaunchError, match=why):
            launch_request(template="gs://b/t.json", params=bad, image="i")
    assert main(["--project", "p", "--region", "r", "--template", "gs://b/t.json", "--image", "i", "--dry-run",
                 *[f"{k}={v}" for k, v in params.items()]]) == 0
    out = capsys.readouterr().out
    assert '"partition_by": "region,segment"' in out and "gcloud dataflow flex-template run" in out


def test_a_dataflow_launch_refuses_to_train_on_the_launcher(tmp_path):
    from lakefill.errors import ConfigError
    from lakefill.pipelines.beam_pipeline import run_beam
    from lakefill.pipelines.config import JobConfig

    job = JobConfig.model_validate({"input": str(EXAMPLES / "customers.csv"), "model": str(tmp_path / "none"),
                                    "schema": str(EXAMPLES / "customers.schema.yaml"),
                                    "output": str(tmp_path / "out"), "train_if_missing": True})
    dataflow = ["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/tmp"]
    with pytest.raises(ConfigError, match="does not train on the launcher machine.*task=train"):
        run_beam(job, dataflow, log=lambda *_: None)
    assert not (tmp_path / "none").exists()
    # nor infer a schema: that would read the input
    with pytest.raises(ConfigError, match="cannot infer a schema.*lakefill schema"):
        run_beam(job.model_copy(update={"schema_path": None}), dataflow, log=lambda *_: None)


@pytest.mark.slow
def test_a_remote_launch_reads_no_record_and_its_workers_complete_the_run(demo_model, tmp_path, monkeypatch):
    """A Dataflow-style launch on the Direct runner (remote=True): the launcher's reader is
    replaced by one that fails, so any record read on the launcher fails the test; a worker fits
    the null policy and completes the report. Same table and findings as a launcher that reads."""
    from deltalake import DeltaTable

    from lakefill.pipelines import launcher
    from lakefill.pipelines.beam_pipeline import run_beam
    from lakefill.transforms.io import ROW_ID
    from lakefill.transforms.plan import RUN_ID

    quiet = lambda *_: None  # noqa: E731
    here = run_beam(demo_job(tmp_path / "here", demo_model, run_id="here"), [], log=quiet)

    def no_reads(*args, **kwargs):
        raise AssertionError("the launcher read the input")

    monkeypatch.setattr(launcher, "read_raw", no_reads)
    remote = run_beam(demo_job(tmp_path / "remote", demo_model, run_id="remote"), [], remote=True, log=quiet)
    assert remote.counts == {} and remote.committed is None  # the launcher reads nothing back
    report = json.loads(Path(remote.report).read_text())
    expected = json.loads(Path(here.report).read_text())
    assert report["committed"] and report["counts"] == expected["counts"]
    assert report["detection"] == expected["detection"] and report["csv_dialect"] == expected["csv_dialect"]
    folder = Path(remote.report).parent
    assert (folder / "report.html").exists() and any((folder / "data_docs").rglob("*.html"))

    def table(outcome):
        return DeltaTable(outcome.table).to_pyarrow_table().sort_by(ROW_ID).drop_columns([RUN_ID])

    assert table(remote).equals(table(here))


@pytest.mark.slow
def test_training_runs_as_a_job_on_each_engine(tmp_path):
    """``--task train``: the model is trained by the engine (a Beam pipeline's worker, the
    Spark driver), once: a second launch finds it and trains nothing."""
    from lakefill.pipelines.beam_pipeline import main as beam_main
    from lakefill.pipelines.spark_job import main as spark_main

    flags = [f"--input={EXAMPLES / 'customers.csv'}", f"--schema={EXAMPLES / 'customers.schema.yaml'}",
             f"--output={tmp_path / 'out'}", "--train_time_budget=20"]
    assert beam_main(["--task=train", f"--model={tmp_path / 'beam-model'}", *flags]) == 0
    manifest = json.loads((tmp_path / "beam-model" / "manifest.json").read_text())
    assert spark_main(["--task", "train", f"--model={tmp_path / 'beam-model'}", *flags]) == 0  # there: kept
    assert json.loads((tmp_path / "beam-model" / "manifest.json").read_text()) == manifest


def _package_dirs() -> set[str]:
    import tomllib

    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())


@pytest.mark.parametrize("dockerfile", ["dataflow/Dockerfile", "spark/Dockerfile"])
def test_the_images_install_exactly_the_lock_and_every_package_folder(dockerfile):
    text = (DEPLOY / dockerfile).read_text()
    copied = set(re.findall(r"^COPY (\S+) \./\1\s*$", text, re.M))
    assert _package_dirs() <= copied, f"{dockerfile} misses {_package_dirs() - copied}"
    installs = [line.strip(" \\&") for line in text.replace("\\\n", "\n").splitlines() if "pip install" in line]
    assert installs == ["RUN pip install --no-cache-dir -r requirements.lock",
                        "pip install --no-cache-dir --no-deps ."], installs
    assert "requirements-dev.lock" not in text  # the test servers stay out of the images


# the fields kubeflow/spark-operator documents for v1beta2 (SparkApplicationSpec, SparkPodSpec)
_SPEC = {"type", "pythonVersion", "mode", "image", "imagePullPolicy", "imagePullSecrets", "mainClass",
         "mainApplicationFile", "arguments", "sparkConf", "hadoopConf", "sparkConfigMap", "hadoopConfigMap", "volumes",
         "driver", "executor", "deps", "restartPolicy", "nodeSelector", "failureRetries", "retryInterval",
         "sparkVersion", "monitoring", "batchScheduler", "timeToLiveSeconds", "dynamicAllocation", "proxyUser"}
_POD = {"cores", "coreLimit", "coreRequest", "memory", "memoryOverhead", "gpu", "image", "configMaps", "secrets",
        "env", "envVars", "envFrom", "labels", "annotations", "volumeMounts", "affinity", "tolerations",
        "podSecurityContext", "securityContext", "schedulerName", "sidecars", "initContainers", "hostNetwork",
        "nodeSelector", "dnsConfig", "terminationGracePeriodSeconds", "serviceAccount", "hostAliases",
        "shareProcessNamespace", "instances", "deleteOnTermination", "podName", "javaOptions", "lifecycle",
        "kubernetesMaster", "serviceAnnotations", "serviceLabels", "ports", "priorityClassName"}


def test_the_spark_application_runs_the_image_on_the_configmaps_job_with_its_output_on_a_store():
    import yaml

    from lakefill.transforms.storage import Location

    docs = list(yaml.safe_load_all((DEPLOY / "spark" / "k8s" / "sparkapplication.yaml").read_text()))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    app = next(d for d in docs if d["kind"] == "SparkApplication")
    spec = app["spec"]
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2" and spec["type"] == "Python" and spec["mode"] == "cluster"
    assert set(spec) <= _SPEC, set(spec) - _SPEC
    for role in ("driver", "executor"):
        assert set(spec[role]) <= _POD, (role, set(spec[role]) - _POD)
        assert any(m["mountPath"] == "/etc/lakefill" for m in spec[role]["volumeMounts"])
    assert {v["configMap"]["name"] for v in spec["volumes"]} == {config_map["metadata"]["name"]}
    assert spec["arguments"][0] == "/etc/lakefill/job.yaml" and "job.yaml" in config_map["data"]
    job = JobConfig.model_validate(yaml.safe_load(config_map["data"]["job.yaml"]))
    for path in (job.input, job.model, job.output):
        assert not Location(path).is_local, path  # pods' disks are ephemeral: everything on the store
    # the image: deploy/spark/Dockerfile puts lakefill's spark_job.py where the manifest runs it
    docker = (DEPLOY / "spark" / "Dockerfile").read_text()
    assert "WORKDIR /opt/lakefill" in docker and spec["mainApplicationFile"] == "local:///opt/lakefill/pipelines/spark_job.py"
    pyspark = re.search(r"^pyspark==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M).group(1)
    assert spec["sparkVersion"] == pyspark and re.search(rf"^FROM apache/spark:{re.escape(pyspark)}\b", docker, re.M)
