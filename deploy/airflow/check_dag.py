"""Checks the lakefill DAG inside Airflow's own virtual environment (run by tests/test_deploy.py).

    AIRFLOW_HOME=TMP python deploy/airflow/check_dag.py SPEC.json [--run]

SPEC.json: {"render": {params}, "runs": [{params}, ...]}.
1. the DagBag imports with no errors; 2. the task graph is the expected one; 3. what each engine's
tasks get from the ``render`` params: the spark-submit command (the Spark provider's own hook
builds it, with the ``spark_default`` connection), the Beam command line (the Beam provider's
option rendering) and the Dataflow Flex Template launch bodies; 4. (--run) ``dag.test()`` with
each of ``runs``: the task states and the Asset events the run emitted. Prints one JSON line
with what it saw; exits non-zero on any failure.
"""

import argparse
import json
import sys
from pathlib import Path

EXPECTED = {
    "job_parameters": ["check_report", "choose_engine", "run_beam_local", "run_dataflow", "run_spark",
                       "train_beam_local", "train_dataflow", "train_spark"],
    "choose_engine": ["run_beam_local", "run_dataflow", "run_spark", "train_beam_local", "train_dataflow",
                      "train_spark"],
    "train_dataflow": ["run_dataflow"],
    "train_spark": ["run_spark"],
    "train_beam_local": ["run_beam_local"],
    "run_dataflow": ["check_report"],
    "run_spark": ["check_report"],
    "run_beam_local": ["check_report"],
    "check_report": [],
}


def rendered(dag, params: dict) -> dict:
    """What each engine's tasks would run with ``params`` (nothing is run)."""
    from airflow.providers.apache.beam.hooks.beam import beam_options_to_args
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    full = {**dag.params.dump(), **params}
    out = dag.get_task("job_parameters").python_callable(params=full, ds_nodash="20260101")
    spark = dag.get_task("run_spark")
    beam = dag.get_task("run_beam_local")
    seen = {"run_id": out["run_id"], "dataflow": {"train": out["dataflow_train"], "run": out["dataflow_run"]}}
    for task in ("train", "run"):
        hook = SparkSubmitHook(conf=out["spark_conf"], application_args=out[f"spark_{task}"], name=spark.name,
                               conn_id=spark._conn_id)
        seen[f"spark_{task}"] = hook._build_spark_submit_command(spark.application)
        seen[f"beam_{task}"] = [full["python"], beam.py_file,
                                *beam_options_to_args({**out[f"beam_{task}"], "runner": beam.runner})]
    return seen


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("--run", action="store_true")
    args = ap.parse_args()
    spec = json.loads(Path(args.spec).read_text())

    from airflow.dag_processing.dagbag import DagBag

    folder = Path(__file__).resolve().parent / "dags"
    bag = DagBag(dag_folder=str(folder))
    out = {"import_errors": {k: str(v)[-2000:] for k, v in bag.import_errors.items()}, "dags": sorted(bag.dag_ids)}
    if bag.import_errors or "lakefill" not in bag.dag_ids:
        print(json.dumps(out))
        return 1
    dag = bag.get_dag("lakefill")
    graph = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    out["graph"] = graph
    out["graph_ok"] = graph == EXPECTED
    if not out["graph_ok"]:
        print(json.dumps(out))
        return 1
    out["rendered"] = rendered(dag, spec["render"])
    out["runs"] = []
    if args.run:
        from airflow.models.asset import AssetEvent
        from airflow.utils.session import create_session

        for task in dag.tasks:  # a failure shows at once (the DAG's retries wait 5 minutes each)
            task.retries = 0
        for conf in spec["runs"]:
            dr = dag.test(run_conf=conf)
            states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
            with create_session() as session:
                events = [{"uri": e.uri, "extra": e.extra} for e in session.query(AssetEvent).all()
                          if (e.extra or {}).get("run_id") == conf.get("run_id")]
            out["runs"].append({"state": str(dr.state), "task_states": states, "asset_events": events})
            if str(dr.state) != "success":
                print(json.dumps(out, default=str))
                return 1
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
