"""Build (and run) the spark-submit command line for a lakefill job.

    python deploy/spark/submit.py JOB.yaml --master spark://host:7077 [--run-id ID]
        [--env lakefill-env.tar.gz] [--deploy-mode client|cluster] [--conf k=v ...] [--dry-run]

With ``--env`` the packed virtual environment (deploy/spark/package.sh) is shipped with
``--archives`` and the driver and executors run its Python; without it they run this
interpreter (a cluster whose machines share the installed environment, or local[*]).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "pipelines" / "spark_job.py"


def build_command(job: str, *, master: str, run_id: str | None = None, env_archive: str | None = None,
                  deploy_mode: str = "client", conf: dict[str, str] | None = None, spark_submit: str = "spark-submit",
                  executor_cores: int | None = None, executor_memory: str | None = None) -> list[str]:
    if deploy_mode not in ("client", "cluster"):
        raise ValueError(f"deploy mode must be client or cluster, got {deploy_mode!r}")
    settings = {"spark.sql.execution.arrow.pyspark.enabled": "true", **(conf or {})}
    cmd = [spark_submit, "--master", master, "--deploy-mode", deploy_mode, "--name", "lakefill"]
    if env_archive:
        cmd += ["--archives", f"{env_archive}#environment"]
        python = "./environment/bin/python"
        settings.setdefault("spark.pyspark.python", python)
        if deploy_mode == "client":
            settings.setdefault("spark.pyspark.driver.python", sys.executable)
        settings.setdefault("spark.executorEnv.PYSPARK_PYTHON", python)
    else:
        settings.setdefault("spark.pyspark.python", sys.executable)
        settings.setdefault("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
    if executor_cores:
        cmd += ["--executor-cores", str(executor_cores)]
    if executor_memory:
        cmd += ["--executor-memory", executor_memory]
    for k, v in sorted(settings.items()):
        cmd += ["--conf", f"{k}={v}"]
    cmd += [str(APP), job]
    if run_id:
        cmd += ["--run-id", run_id]
    return cmd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job")
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--run-id")
    ap.add_argument("--env", help="packed environment (.tar.gz) from deploy/spark/package.sh")
    ap.add_argument("--deploy-mode", default="client", choices=["client", "cluster"])
    ap.add_argument("--conf", action="append", default=[], help="k=v, repeatable")
    ap.add_argument("--executor-cores", type=int)
    ap.add_argument("--executor-memory")
    ap.add_argument("--spark-submit", default=os.environ.get("SPARK_SUBMIT", "spark-submit"))
    ap.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    args = ap.parse_args(argv)
    conf = {}
    for kv in args.conf:
        if "=" not in kv:
            ap.error(f"--conf {kv!r}: expected key=value")
        k, v = kv.split("=", 1)
        conf[k] = v
    cmd = build_command(args.job, master=args.master, run_id=args.run_id, env_archive=args.env,
                        deploy_mode=args.deploy_mode, conf=conf, spark_submit=args.spark_submit,
                        executor_cores=args.executor_cores, executor_memory=args.executor_memory)
    print(shlex.join(cmd))
    if args.dry_run:
        return 0
    return subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
