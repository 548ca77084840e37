"""``lakefill report``: print a run's report, render report.html, ``--check`` it for an orchestrator."""

from __future__ import annotations

from pathlib import Path

from lakefill.errors import LakefillError
from lakefill.pipelines.commands._common import add_parser, job_config
from lakefill.pipelines.report_checks import report_problems
from lakefill.transforms.storage import Location


def register(sub) -> None:
    p = add_parser(sub, "report", help="render and print a run's report (report.html beside report.json)")
    p.add_argument("run_dir", nargs="?", help="OUTPUT/reports/RUN_ID")
    p.add_argument("--job", help="find the run through its job config (with --run-id)")
    p.add_argument("--run-id", help="the run whose report to read (with --job)")
    p.add_argument("--output", help="the run's output folder, if not the job config's")
    p.add_argument("--check", action="store_true",
                   help="exit 1 unless the run is committed with no row lost and the quarantine under its share")
    p.add_argument("--open", action="store_true", help="open report.html in a browser")
    p.set_defaults(func=run)


def run(args) -> int:
    from lakefill.pipelines.report import column_shares_of_run, render_report, report_page, suspects_of
    from lakefill.transforms.stage import read_report

    options: dict = {}
    if args.run_dir:
        run_dir = Location(args.run_dir)
    elif args.job and args.run_id:
        job = job_config(args.job)
        options = job.storage_options
        run_dir = Location(args.output or job.output, options) / "reports" / args.run_id
    else:
        raise LakefillError("report needs a run folder, or --job JOB.yaml and --run-id ID")
    if not (run_dir / "report.json").exists():
        raise LakefillError(f"{run_dir} has no report.json: pass a run's folder, OUTPUT/reports/RUN_ID")
    report = read_report(run_dir)
    if "column_shares" not in report:  # a run made before they were recorded: counted for the check and the page
        report["column_shares"] = column_shares_of_run(report, options)
    if run_dir.is_local:
        page = render_report(run_dir.local_path, options=options, report=report)
    else:  # rendered here, written beside its report.json
        page = (run_dir / "report.html").write_text(report_page(report, None, options=options))
    c = report.get("counts", {})
    print(f"run {report['run_id']} ({report.get('engine')}, {'committed' if report.get('committed') else 'not committed'}): "
          f"{c.get('rows_in')} rows in, {c.get('rows_written')} written, {c.get('rows_quarantined')} quarantined")
    for column, f in suspects_of(report):
        print(f"  suspect, kept as a value: {column} {f['value']!r} ({f['count']} cells of the sample; list it in "
              f"null_values to replace it)")
    for reason, n in c.get("quarantined_by_reason", {}).items():
        print(f"  quarantined {n:>8} : {reason}")
    print(f"report: {page}")
    if args.check:
        problems = report_problems(report)
        for p in problems:
            print(f"check failed: {p}")
        if problems:
            return 1
        print(f"check passed: run {report['run_id']} is in {report.get('table')}")
    if args.open and isinstance(page, Path):
        import webbrowser

        webbrowser.open(page.resolve().as_uri())
    return 0
