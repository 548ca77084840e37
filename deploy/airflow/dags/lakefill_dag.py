"""Airflow 3 DAG: the lakefill stage as a job on Dataflow, on Spark or on the local Beam Direct
runner; the model trained as a job on the same engine when it is missing; the run report read
from the lake and checked; the table emitted as an Airflow Asset.

    job_parameters -> choose_engine -> train_<engine> (when train_if_needed) -> run_<engine> -> check_report

- Dataflow: ``DataflowStartFlexTemplateOperator`` launches the Flex Template
  (``deploy/dataflow``) with ``task=train`` then ``task=run``; the launcher reads no record and
  trains nothing (the workers do). Params ``dataflow_options``: project, region, template (the
  template spec's gs:// path), image, temp_location, service_account, machine_type, network,
  subnetwork, and ``environment`` (more ``FlexTemplateRuntimeEnvironment`` fields).
- Spark: ``SparkSubmitOperator`` on the connection ``spark_default`` (its master and deploy
  mode) with ``spark_conf``; ``spark_env_archive`` (``deploy/spark/package.sh``'s packed
  environment on a store) is unpacked by the executors (``spark.archives``) and their Python
  runs from it; ``python`` is the driver's Python in client mode.
- beam-local: ``BeamRunPythonPipelineOperator`` with the Direct runner, run by the pipeline
  environment's Python (``python``; Airflow's own environment has no lakefill).

Every path param may be an object-store URI (``s3://``, ``gs://``, ``abfss://``): the job config
(``job``, optional; the other params override its fields), input, schema, model and output
are read by the engine with its own credentials (``storage_options`` adds endpoints or keys).
``check_report`` reads ``OUTPUT/reports/RUN_ID/report.json`` through Airflow's object storage
(the connection ``storage_conn_id``) and fails the DAG run on the problems ``lakefill report
--check`` names (``lakefill_entry/report_checks.py``, a link to lakefill's one rule). Retries are safe: the lake commit is idempotent per run id
(default ``lakefill-<logical date>``).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator
from airflow.sdk import DAG, Asset, AssetAlias, ObjectStoragePath, Param, task

# the entry points the engines run (this DAG's folder travels with it; lakefill_entry is in .airflowignore)
ENTRY = Path(__file__).resolve().parent / "lakefill_entry"
TABLES = AssetAlias("lakefill-tables")  # each run emits its table's Asset (the output's table URI) through it
JOB_FIELDS = ("job", "input", "schema", "model", "output", "run_id")
ENVIRONMENT = {"temp_location": "tempLocation", "service_account": "serviceAccountEmail",
               "machine_type": "machineType", "network": "network", "subnetwork": "subnetwork"}


def report_checks():
    """lakefill's report check (``lakefill report --check``'s rule), from the file beside the
    entry points: a link to ``pipelines/report_checks.py`` (standard library only), since
    Airflow's environment has no lakefill."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lakefill_report_checks", ENTRY / "report_checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PipelineEnvBeamOperator(BeamRunPythonPipelineOperator):
    """The Beam operator, with the interpreter as a param: the pipeline environment's Python."""
    template_fields = (*BeamRunPythonPipelineOperator.template_fields, "py_interpreter")


def job_flags(params: dict, run_id: str) -> dict[str, str]:
    """The job's fields as the engines' flags take them (``--FIELD=VALUE``; the Flex Template's
    parameters): lists joined with commas, objects as JSON, empty values left out."""
    fields = {k: params.get(k) for k in JOB_FIELDS}
    fields["run_id"] = run_id
    fields.update(params.get("job_options") or {})
    if params.get("storage_options"):
        fields["storage_options"] = params["storage_options"]
    out = {}
    for key, value in fields.items():
        if value is None or value == "" or value == [] or value == {}:
            continue
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        out[key] = str(value)
    return out


def dataflow_request(params: dict, flags: dict[str, str], task_name: str, run_id: str) -> dict:
    """The ``flexTemplates.launch`` body of one task (train or run)."""
    opts = params.get("dataflow_options") or {}
    missing = [k for k in ("project", "region", "template") if not opts.get(k)]
    if missing:
        raise ValueError(f"engine dataflow needs dataflow_options {missing} (the template: deploy/dataflow/build.sh)")
    if not str(opts["template"]).startswith("gs://"):
        raise ValueError(f"dataflow_options.template must be the gs:// path of the template spec, got {opts['template']!r}")
    environment = {ENVIRONMENT[k]: opts[k] for k in ENVIRONMENT if opts.get(k)}
    if opts.get("image"):
        environment["sdkContainerImage"] = opts["image"]
    environment.update(opts.get("environment") or {})
    name = "".join(c if c.isalnum() else "-" for c in f"lakefill-{task_name}-{run_id}".lower()).strip("-")[:60]
    return {"launchParameter": {"jobName": name, "containerSpecGcsPath": opts["template"],
                                "parameters": {**flags, "task": task_name}, "environment": environment}}


def spark_settings(params: dict) -> dict[str, str]:
    """``spark-submit --conf`` settings: the params' ``spark_conf`` over lakefill's; with a packed
    environment the executors run its Python (``spark.archives``, unpacked as ``environment``)."""
    python = params.get("python") or "python3"
    conf = {"spark.sql.execution.arrow.pyspark.enabled": "true", "spark.pyspark.driver.python": python}
    if params.get("spark_env_archive"):
        conf["spark.archives"] = f"{params['spark_env_archive']}#environment"
        conf["spark.pyspark.python"] = "./environment/bin/python"
    else:
        conf["spark.pyspark.python"] = python
    conf.update({k: str(v) for k, v in (params.get("spark_conf") or {}).items()})
    return conf


with DAG(
    dag_id="lakefill",
    description="find disguised nulls, validate, impute, refine and commit to Delta Lake",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2},
    tags=["lakefill", "data-quality"],
    params={
        "engine": Param("beam-local", enum=["dataflow", "spark", "beam-local"]),
        "job": Param("", type="string", description="job config (YAML), a path or URI the engine reads; optional"),
        "input": Param("", type="string", description="input file, folder or glob (URI); empty: the job's"),
        "schema": Param("", type="string", description="schema file (URI); empty: the job's"),
        "model": Param("", type="string", description="model folder (URI); empty: the job's"),
        "output": Param("", type="string", description="the lake folder (URI): table, quarantine, reports; "
                                                       "required (the report is read from it)"),
        "run_id": Param("", type="string", description="run id; empty: lakefill-<logical date>"),
        "storage_options": Param({}, type="object", description="the job's storage_options (endpoints, flags)"),
        "job_options": Param({}, type="object", description="any other job field, e.g. {\"partition_by\": [\"region\"]}"),
        "train_if_needed": Param(True, type="boolean", description="train the model as a job when it is missing"),
        "python": Param("python3", type="string", description="the pipeline environment's Python (beam-local; "
                                                               "Spark's driver in client mode)"),
        "dataflow_options": Param({}, type="object", description="project, region, template, image, temp_location, "
                                                                  "service_account, machine_type, network, "
                                                                  "subnetwork, environment"),
        "spark_conf": Param({}, type="object", description="spark-submit --conf settings"),
        "spark_env_archive": Param("", type="string", description="packed environment (.tar.gz URI) for executors"),
        "storage_conn_id": Param("", type="string", description="Airflow connection to read the report with "
                                                                "(e.g. aws_default); empty: the scheme's default"),
    },
) as dag:

    @task(task_id="job_parameters", multiple_outputs=True)
    def job_parameters(params=None, **context) -> dict:
        """Every param rendered once into what each engine's task takes."""
        if not params["output"]:
            raise ValueError("param output is required: the lake folder the job writes and the report is read from")
        run_id = params["run_id"] or "lakefill-" + context["ds_nodash"]
        flags = job_flags(params, run_id)
        # the beam pipeline's own options are its flags; the operator adds --runner
        beam = {**flags, "direct_running_mode": "in_memory"}
        args = [f"--{k}={v}" for k, v in flags.items()]
        out = {"run_id": run_id, "flags": flags, "spark_conf": spark_settings(params),
               "spark_train": ["--task", "train", *args], "spark_run": ["--task", "run", *args],
               "beam_train": {**beam, "task": "train"}, "beam_run": {**beam, "task": "run"}}
        if params["engine"] == "dataflow":
            out["dataflow_train"] = dataflow_request(params, flags, "train", run_id)
            out["dataflow_run"] = dataflow_request(params, flags, "run", run_id)
        else:
            out["dataflow_train"] = out["dataflow_run"] = {}
        return out

    job = job_parameters()

    @task.branch(task_id="choose_engine")
    def choose_engine(params=None):
        name = {"dataflow": "dataflow", "spark": "spark", "beam-local": "beam_local"}[params["engine"]]
        return ([f"train_{name}"] if params["train_if_needed"] else []) + [f"run_{name}"]

    branch = choose_engine()
    after_train = {"trigger_rule": "none_failed_min_one_success"}  # runs when its training was skipped too
    flex = {"location": "{{ params.dataflow_options.region }}", "project_id": "{{ params.dataflow_options.project }}",
            "wait_until_finished": True}
    train_dataflow = DataflowStartFlexTemplateOperator(task_id="train_dataflow", body=job["dataflow_train"], **flex)
    run_dataflow = DataflowStartFlexTemplateOperator(task_id="run_dataflow", body=job["dataflow_run"], **flex,
                                                     **after_train)
    spark = {"application": str(ENTRY / "spark_main.py"), "conf": job["spark_conf"], "name": "lakefill",
             "conn_id": "spark_default"}
    train_spark = SparkSubmitOperator(task_id="train_spark", application_args=job["spark_train"], **spark)
    run_spark = SparkSubmitOperator(task_id="run_spark", application_args=job["spark_run"], **spark, **after_train)
    beam = {"py_file": str(ENTRY / "beam_main.py"), "runner": "DirectRunner", "py_interpreter": "{{ params.python }}"}
    train_beam_local = PipelineEnvBeamOperator(task_id="train_beam_local", pipeline_options=job["beam_train"], **beam)
    run_beam_local = PipelineEnvBeamOperator(task_id="run_beam_local", pipeline_options=job["beam_run"], **beam,
                                             **after_train)

    @task(task_id="check_report", trigger_rule="none_failed_min_one_success", outlets=[TABLES])
    def check_report(lakefill_run: str, params=None, outlet_events=None):
        """Fail the DAG run if the run did not commit, lost rows, or quarantined too much; emit
        the table's Asset with the run's counts."""
        run_id, output = lakefill_run, params["output"].rstrip("/")
        uri = output if "://" in output else "file://" + output
        path = ObjectStoragePath(f"{uri}/reports/{run_id}/report.json", conn_id=params["storage_conn_id"] or None)
        report = json.loads(path.read_text())
        problems = report_checks().report_problems(report)
        if problems:
            raise RuntimeError(f"run {run_id} failed its report check ({path}): " + "; ".join(problems))
        counts = report["counts"]
        outlet_events[TABLES].add(Asset(f"{uri}/table"), extra={"run_id": run_id, **counts})
        return counts

    check = check_report(job["run_id"])
    job >> branch
    branch >> [train_dataflow, run_dataflow, train_spark, run_spark, train_beam_local, run_beam_local]
    train_dataflow >> run_dataflow >> check
    train_spark >> run_spark >> check
    train_beam_local >> run_beam_local >> check
