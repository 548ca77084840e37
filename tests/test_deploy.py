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
