"""Checks the lakefill DAG inside Airflow's own virtual environment (run by tests/test_deploy.py).

    AIRFLOW_HOME=TMP python deploy/airflow/check_dag.py --lakefill-bin .venv/bin/lakefill --job JOB.yaml \\
        --output OUT [--run]

1. the DagBag imports with no errors; 2. the task graph is the expected one; the shell commands
rendered with hostile params (printed for the test to split); 3. (--run)
``dag.test()`` runs the DAG end to end with the local Beam Direct runner on the given job.
Prints one JSON line with what it saw; exits non-zero on any failure.
"""

import argparse
import json
import sys
from pathlib import Path

EXPECTED = {
    "ensure_model": ["choose_engine"],
    "choose_engine": ["run_beam_local", "run_dataflow", "run_spark"],
    "run_dataflow": ["check_report"],
    "run_spark": ["check_report"],
    "run_beam_local": ["check_report"],
    "check_report": [],
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lakefill-bin", required=True)
    ap.add_argument("--job", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--run", action="store_true")
    args = ap.parse_args()

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
    # every shell command rendered by Airflow's own Jinja with hostile params: each must stay one word
    hostile = "x; touch /tmp/pwned $(id) `id`"
    env = dag.get_template_env()
    params = {"job": hostile, "model": hostile, "output": hostile, "run_id": hostile, "lakefill_bin": "lakefill",
              "train_if_needed": True, "workdir": "."}
    out["rendered"] = {t.task_id: env.from_string(t.bash_command).render(params=params, ds_nodash="20260101")
                       for t in dag.tasks if hasattr(t, "bash_command")}
    out["hostile"] = hostile
    if args.run:
        conf = {"job": args.job, "output": args.output, "run_id": "airflow-test", "engine": "beam-local",
                "lakefill_bin": args.lakefill_bin, "workdir": args.workdir, "train_if_needed": True}
        dr = dag.test(run_conf=conf)
        states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
        out["run_state"], out["task_states"] = str(dr.state), states
        if str(dr.state) != "success":
            print(json.dumps(out))
            return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
