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
    assert sorted(names) == sorted(["job", *fields])
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


@pytest.mark.slow
def test_airflow_dag_imports_has_the_expected_graph_and_runs_end_to_end(tmp_path):
    python = AIRFLOW_VENV / "bin" / "python"
    assert python.exists(), f"Airflow's own environment {AIRFLOW_VENV} is missing: `make airflow-venv` builds it"
    import yaml

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"input": str(EXAMPLES / "customers.csv"),
                                   "schema": str(EXAMPLES / "customers.schema.yaml"), "model": str(tmp_path / "model"),
                                   "output": str(tmp_path / "out"), "train_if_missing": True, "mode": "append"}))
    home = tmp_path / "airflow-home"
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(DEPLOY / "airflow" / "dags"), "PYTHONPATH": ""}
    subprocess.run([str(AIRFLOW_VENV / "bin" / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=600)
    out = subprocess.run([str(python), str(DEPLOY / "airflow" / "check_dag.py"),
                          "--lakefill-bin", str(Path(sys.executable).parent / "lakefill"), "--job", str(job),
                          "--output", str(tmp_path / "out"), "--workdir", str(ROOT), "--run"],
                         env=env, capture_output=True, text=True, timeout=1200)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    assert lines, out.stdout[-3000:] + out.stderr[-3000:]
    seen = json.loads(lines[-1])
    assert seen["import_errors"] == {} and seen["graph_ok"], seen
    assert set(seen["rendered"]) == {"ensure_model", "run_beam_local"}
    for task_id, command in seen["rendered"].items():  # no param becomes shell code
        words = shlex.split(command)
        assert seen["hostile"] in words and "touch" not in words, (task_id, command)
    assert seen["run_state"] == "success", seen
    assert seen["task_states"]["run_beam_local"] == "success" and seen["task_states"]["run_spark"] == "skipped"
    report = json.loads((tmp_path / "out" / "reports" / "airflow-test" / "report.json").read_text())
    assert report["engine"] == "beam" and report["committed"]


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
                                    "output": str(tmp_path / "out"), "train_if_missing": True})
    with pytest.raises(ConfigError, match="does not train"):
        run_beam(job, ["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/tmp"],
                 log=lambda *_: None)
    assert not (tmp_path / "none").exists()


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
