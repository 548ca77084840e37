"""Launch a lakefill run from the Flex Template: the request, checked before it is sent.

    python deploy/dataflow/launch.py --project P --region R --template gs://b/templates/lakefill-TAG.json \
        --image REGION-docker.pkg.dev/P/REPO/lakefill:TAG \
        input=gs://b/raw/customers.csv model=gs://b/models/customers output=gs://b/lake/customers \
        run_id=2026-11-30 partition_by=region,segment [--gpu nvidia-tesla-t4] [--dry-run]

Every KEY=VALUE must be a parameter of ``metadata.json`` and match its regex; the required ones
must be there; a value may hold commas (``partition_by=region,segment``: the gcloud command
uses its ``^~^`` delimiter, and the REST body carries each value whole). ``--dry-run`` prints
the ``projects.locations.flexTemplates.launch`` request body and the equivalent gcloud command;
otherwise the gcloud command runs. Nothing here reads the input, trains or reads a report: the
launcher only checks names and shapes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

METADATA = Path(__file__).resolve().parent / "metadata.json"
DELIM = "~"  # gcloud's list delimiter for --parameters (``^~^a=1~b=x,y``): no parameter value may hold it


class LaunchError(ValueError):
    pass


def check_parameters(params: dict[str, str], metadata: dict | None = None) -> dict[str, str]:
    """The parameters, checked against the template's metadata (names, required, regexes)."""
    metadata = metadata or json.loads(METADATA.read_text())
    declared = {p["name"]: p for p in metadata["parameters"]}
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise LaunchError(f"unknown template parameter(s) {unknown}; the template takes {sorted(declared)}")
    missing = sorted(n for n, p in declared.items() if not p.get("isOptional") and not params.get(n))
    if missing:
        raise LaunchError(f"missing required template parameter(s) {missing}")
    for name, value in params.items():
        for rx in declared[name].get("regexes", []):
            if not re.fullmatch(rx, value):
                raise LaunchError(f"parameter {name}={value!r} does not match the template's pattern {rx!r}")
        if DELIM in value:
            raise LaunchError(f"parameter {name}={value!r} holds {DELIM!r}, the launch command's delimiter")
    return params


def launch_request(*, template: str, params: dict[str, str], image: str, job_name: str | None = None,
                   gpu: str | None = None, machine_type: str | None = None) -> dict:
    """The body of ``projects.locations.flexTemplates.launch`` (LaunchFlexTemplateRequest)."""
    if not template.startswith("gs://"):
        raise LaunchError(f"--template must be the gs:// path of the template spec, got {template!r}")
    check_parameters(params)
    environment: dict = {"sdkContainerImage": image}
    if gpu:
        environment["additionalExperiments"] = ["use_runner_v2"]
        environment["dataflowServiceOptions"] = [f"worker_accelerator=type:{gpu};count:1;install-nvidia-driver"]
        environment["machineType"] = machine_type or "n1-standard-8"
    elif machine_type:
        environment["machineType"] = machine_type
    name = job_name or "lakefill-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return {"launchParameter": {"jobName": name, "containerSpecGcsPath": template, "parameters": dict(params),
                                "environment": environment}}


def gcloud_command(request: dict, *, project: str, region: str) -> list[str]:
    """The same launch as a gcloud command line."""
    lp = request["launchParameter"]
    env = lp["environment"]
    params = {"sdk_container_image": env["sdkContainerImage"], **lp["parameters"]}
    cmd = ["gcloud", "dataflow", "flex-template", "run", lp["jobName"], "--project", project, "--region", region,
           "--template-file-gcs-location", lp["containerSpecGcsPath"],
           "--parameters", f"^{DELIM}^" + DELIM.join(f"{k}={v}" for k, v in params.items())]
    if env.get("additionalExperiments"):
        cmd += ["--additional-experiments", ",".join(env["additionalExperiments"])]
    if env.get("dataflowServiceOptions"):
        cmd += [f"--dataflow-service-options={DELIM.join(env['dataflowServiceOptions'])}"]
    if env.get("machineType"):
        cmd += ["--worker-machine-type", env["machineType"]]
    return cmd


def parse_params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise LaunchError(f"expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", required=True)
    ap.add_argument("--region", required=True)
    ap.add_argument("--template", required=True, help="gs:// path of the template spec (build.sh prints it)")
    ap.add_argument("--image", required=True, help="the lakefill image (the workers' sdk_container_image)")
    ap.add_argument("--job-name")
    ap.add_argument("--gpu", help="accelerator type, e.g. nvidia-tesla-t4 (one per worker)")
    ap.add_argument("--machine-type")
    ap.add_argument("--dry-run", action="store_true", help="print the request and the command, launch nothing")
    ap.add_argument("params", nargs="*", metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    try:
        request = launch_request(template=args.template, params=parse_params(args.params), image=args.image,
                                 job_name=args.job_name, gpu=args.gpu, machine_type=args.machine_type)
    except LaunchError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        return 2
    cmd = gcloud_command(request, project=args.project, region=args.region)
    if args.dry_run:
        print(json.dumps(request, indent=2))
        print(shlex.join(cmd))
        return 0
    return subprocess.call(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
