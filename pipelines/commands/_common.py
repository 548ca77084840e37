"""What the commands share: their parsers' common flags, the CSV dialect, the route from flags to
a job config, and running a job on an engine."""

from __future__ import annotations

import argparse
from pathlib import Path

from lakefill.errors import LakefillError

DEBUG = argparse.ArgumentParser(add_help=False)
DEBUG.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="on an error, show the Python traceback too")
CSV = argparse.ArgumentParser(add_help=False)
CSV.add_argument("--delimiter", help="CSV field delimiter, one character (default: sniffed from the file)")
CSV.add_argument("--quotechar", default='"', help='CSV quote character (default ")')
CSV.add_argument("--encoding", default="utf-8-sig", help="text encoding of a CSV file (default utf-8)")


def add_parser(sub, name: str, *, csv: bool = False, **kwargs) -> argparse.ArgumentParser:
    """A (sub)command's parser: ``--debug`` on every one, the CSV dialect's flags where it reads files."""
    return sub.add_parser(name, parents=[DEBUG, *([CSV] if csv else [])], **kwargs)


def csv_options(args):
    """The CSV dialect the command line asks for (the delimiter is sniffed when not given)."""
    from lakefill.transforms.io import CsvOptions

    try:
        return CsvOptions(delimiter=args.delimiter, quotechar=args.quotechar, encoding=args.encoding)
    except ValueError as err:
        raise LakefillError(str(err)) from err


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def uri_or_abs(path: str | None) -> str | None:
    """A URI as given (s3://, gs://, ...); a local path made absolute."""
    if path is None:
        return None
    return path if "://" in path else str(Path(path).resolve())


def job_config(path: str | None, **flags):
    """A command's job config: the file (if any) and the flags given over it (field names as in
    the file, paths made absolute), through ``lakefill.pipelines.config.job_config``."""
    from lakefill.pipelines.config import job_config as route

    paths = ("input", "output", "schema", "model")
    return route(path, source="the command's flags",
                 **{k: (uri_or_abs(v) if k in paths else v) for k, v in flags.items()})


RUN_OPTIONS = ["--input", "--output", "--schema", "--model", "--run-id", "--engine", "--verbose"]


def _closest(flags: list[str], engine: str) -> str:
    """' (did you mean --output?)' for the flags that look like an option ``run`` knows."""
    import difflib

    known = list(RUN_OPTIONS) + {"spark": ["--master", "--conf"], "beam": ["--runner", "--project", "--region",
                                 "--temp_location", "--setup_file", "--direct_num_workers"]}.get(engine, [])
    hints = []
    for flag in flags:
        if flag.startswith("-"):
            close = difflib.get_close_matches(flag.split("=", 1)[0], known, n=1, cutoff=0.6)
            if close:
                hints.append(f"{close[0]} for {flag.split('=', 1)[0]}")
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def _check_engine_options(engine: str, extra: list[str]) -> None:
    """Refuse, before any work, an option the engine does not take, naming the closest known one."""
    if engine == "local" and extra:
        raise LakefillError(f"unknown option(s) for the local engine: {extra}{_closest(extra, engine)}")
    try:
        if engine == "spark":
            from lakefill.pipelines.spark_job import parse_spark_args

            parse_spark_args(extra)
        elif engine == "beam" and extra:
            from lakefill.pipelines.beam_pipeline import pipeline_options

            pipeline_options(extra)
    except LakefillError as err:
        raise LakefillError(f"{err}{_closest(extra, engine)}") from err


def run_engine(engine: str, config, extra: list[str]):
    """The job run on ``engine`` (local, beam or spark) with its own options ``extra``."""
    _check_engine_options(engine, extra)
    if engine == "local":
        from lakefill.pipelines.local_job import run_local

        return run_local(config)
    if engine == "beam":
        from lakefill.pipelines.beam_pipeline import run_beam

        return run_beam(config, extra)
    if engine == "spark":
        from lakefill.pipelines.spark_job import run_spark

        return run_spark(config, extra)
    raise LakefillError(f"unknown engine {engine!r}")


def print_outcome(outcome) -> None:
    c = outcome.counts
    print(f"run {outcome.run_id}: {c['rows_in']} rows in, {c['rows_written']} written, {c['rows_quarantined']} quarantined, "
          f"{c['rows_refined']} refined by reverse training"
          + ("" if outcome.committed else " (already committed before: nothing written twice)"))
    print(f"  lake table : {outcome.table}")
    print(f"  quarantine : {outcome.quarantine}")
    print(f"  report     : {outcome.report}")
