"""Airflow 3 DAG: train the lakefill model if needed, run the stage on Dataflow, Spark or the
local Beam Direct runner, then check the run report.

Retries are safe: the lake commit is idempotent per run id (default: ``lakefill-<logical date>``),
so a retried or re-triggered run never writes a row twice.

Airflow runs in its own virtual environment; the pipeline runs in the pipeline's environment
(``lakefill_bin``: its ``lakefill`` command) or, on Dataflow and Spark, on the cluster.
"""

from __future__ import annotations

import shlex
from datetime import datetime

from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param, task

RUN_ID = "{{ params.run_id or ('lakefill-' + ds_nodash) }}"
# in a shell command every param is quoted (the `sh` filter is shlex.quote): no param becomes shell code
RUN_ID_SH = "{{ (params.run_id or ('lakefill-' + ds_nodash)) | sh }}"

with DAG(
    dag_id="lakefill",
    description="find disguised nulls, validate, impute, refine and commit to Delta Lake",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2},
    tags=["lakefill", "data-quality"],
    user_defined_filters={"sh": shlex.quote},
    params={
        "job": Param("pipelines/examples/demo.yaml", type="string", description="lakefill job config (YAML)"),
        "output": Param("", type="string", description="output folder; empty: the job config's"),
        "run_id": Param("", type="string", description="run id; empty: lakefill-<logical date>"),
        "engine": Param("beam-local", enum=["dataflow", "spark", "beam-local"]),
        "model": Param("", type="string", description="model folder; empty: the job config's"),
        "train_if_needed": Param(True, type="boolean"),
        "lakefill_bin": Param("lakefill", type="string", description="the pipeline environment's lakefill command"),
        "workdir": Param(".", type="string", description="the lakefill checkout (for relative paths)"),
        "dataflow_options": Param({}, type="object", description="Beam pipeline options for Dataflow"),
        "spark_conf": Param({}, type="object", description="spark-submit --conf settings"),
    },
) as dag:

    ensure_model = BashOperator(
        task_id="ensure_model",
        cwd="{{ params.workdir }}",
        bash_command=(
            "{{ params.lakefill_bin | sh }} train --job {{ params.job | sh }} --quiet"
            "{% if params.model %} --out {{ params.model | sh }}{% endif %}"
            "{% if params.train_if_needed %} --if-missing{% else %} --check-only{% endif %}"
        ),
    )

    @task.branch(task_id="choose_engine")
    def choose_engine(params=None):
        return {"dataflow": "run_dataflow", "spark": "run_spark", "beam-local": "run_beam_local"}[params["engine"]]

    run_dataflow = BeamRunPythonPipelineOperator(
        task_id="run_dataflow",
        py_file="pipelines/beam_pipeline.py",
        runner="DataflowRunner",
        pipeline_options={"job": "{{ params.job }}", "run_id": RUN_ID, "setup_file": "./setup.py"},
        default_pipeline_options={},
        dataflow_config={"job_name": "lakefill-{{ ds_nodash }}", "wait_until_finished": True},
    )

    run_spark = SparkSubmitOperator(
        task_id="run_spark",
        application="{{ params.workdir }}/pipelines/spark_job.py",
        application_args=["{{ params.job }}", "--run-id", RUN_ID],
        conf={"spark.sql.execution.arrow.pyspark.enabled": "true"},
        name="lakefill",
    )

    run_beam_local = BashOperator(
        task_id="run_beam_local",
        cwd="{{ params.workdir }}",
        bash_command="{{ params.lakefill_bin | sh }} run {{ params.job | sh }} --engine beam --run-id " + RUN_ID_SH
                     + "{% if params.output %} --output {{ params.output | sh }}{% endif %}",
    )

    @task(task_id="check_report", trigger_rule="none_failed_min_one_success")
    def check_report(params=None, ti=None, **context):
        """Fail the DAG run if the run did not commit, lost rows, or quarantined too much."""
        import subprocess

        run_id = params["run_id"] or "lakefill-" + context["ds_nodash"]
        out = subprocess.run([params["lakefill_bin"], "report", "--job", params["job"], "--run-id", run_id,
                              "--check"] + (["--output", params["output"]] if params["output"] else []),
                             cwd=params["workdir"], capture_output=True, text=True)
        print(out.stdout)
        if out.returncode != 0:
            raise RuntimeError(f"run {run_id} failed its report check:\n{out.stdout}\n{out.stderr}")
        return out.stdout.strip().splitlines()[-1]

    ensure_model >> choose_engine() >> [run_dataflow, run_spark, run_beam_local] >> check_report()
