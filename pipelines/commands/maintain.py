"""``lakefill maintain``: compact and vacuum an output's Delta tables."""

from __future__ import annotations

from lakefill.errors import LakefillError
from lakefill.pipelines.commands._common import add_parser
from lakefill.transforms.storage import Location


def register(sub) -> None:
    p = add_parser(sub, "maintain", help="compact and vacuum an output's Delta tables (table and quarantine)")
    p.add_argument("output", help="the job's output folder or URI (holding table/ and quarantine/)")
    p.add_argument("--compact", action="store_true", help="rewrite small files into larger ones (deltalake optimize)")
    p.add_argument("--vacuum", action="store_true", help="delete files no recent version reads (deltalake vacuum)")
    p.add_argument("--retain-hours", type=float, help="with --vacuum: keep files read by versions of the last H hours "
                                                      "(default Delta's 168; less lets older versions go unreadable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from lakefill.transforms.lake import maintain

    if not (args.compact or args.vacuum):
        raise LakefillError("maintain needs --compact, --vacuum or both")
    if args.retain_hours is not None and not args.vacuum:
        raise LakefillError("--retain-hours goes with --vacuum")
    out = Location(args.output)
    tables = [out / "table", out / "quarantine"]
    missing = [t for t in tables if not (t / "_delta_log").is_dir()]
    if missing:  # before any work: both are lakefill's, or nothing is touched
        raise LakefillError(f"{missing[0]} is not a Delta table (no _delta_log): maintain takes a lakefill output "
                            f"folder, the one that holds table/ and quarantine/")
    for t in tables:
        done = maintain(t, compact=args.compact, vacuum=args.vacuum, retain_hours=args.retain_hours)
        what = []
        if "compacted" in done:
            what.append(f"compacted {done['compacted']['files_removed']} files into {done['compacted']['files_added']}")
        if "vacuumed_files" in done:
            what.append(f"vacuumed {done['vacuumed_files']} files")
        print(f"{t}: {', '.join(what)}; {done['files_before']} -> {done['files_after']} files in the table's "
              f"version {done['version_after']}")
    return 0
