"""The ``lakefill`` command line: the parser of every registered command
(``lakefill.pipelines.commands``), the exit codes and the error handling."""

from __future__ import annotations

import argparse
import logging
import sys

from lakefill.errors import LakefillError
from lakefill.pipelines.commands import COMMANDS
from lakefill.pipelines.commands._common import DEBUG


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lakefill", parents=[DEBUG], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 description="Find disguised nulls, validate, impute with a masked autoencoder, write to Delta.",
                                 epilog=EXIT_CODES)
    sub = ap.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return ap


EXIT_CODES = """exit codes:
  0  done
  1  `lakefill report --check`: the run failed its check
  2  a problem with the input, schema, job config, model or output: the message names the file,
     row, column or URI, and what to change
  3  an unexpected error inside lakefill (the message says so; --debug shows the traceback)"""


class _QuietImports(logging.Filter):
    """Beam warns at import about GCP clients that a run without GCP I/O never uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    if not any(isinstance(f, _QuietImports) for f in logging.getLogger().filters):
        logging.getLogger().addFilter(_QuietImports())
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = getattr(args, "debug", False)
    try:
        return args.func(args, extra) if getattr(args, "passthrough", False) else args.func(args)
    except KeyboardInterrupt:
        print("lakefill: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output was piped into a reader that stopped (| head): not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (LakefillError, FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError) as err:
        if debug:
            raise
        text = str(err)
        if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
            text = f"{err.filename}: {text}"
        print(f"lakefill: error: {text}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the last line of defence of a command line
        if debug:
            raise
        print(f"lakefill: internal error: {type(err).__name__}: {err}\n"
              f"  this is a bug in lakefill, not in your data: run the same command with --debug for the traceback "
              f"and report it", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
