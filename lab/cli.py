"""The `lab` command. Every failure the user can act on is one line and a non-zero exit (2 for bad
input, 1 for a run that failed); bad input is refused before a run directory exists or QEMU starts."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from lab import __version__
from lab.errors import LabError

LOG = logging.getLogger(__name__)
EX_SOFTWARE = 70  # an internal error: a bug in the lab, reported with a pointer to the log


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: each group of commands adds its own (lab/commands/)."""
    from lab.commands import builds, machines, results, scenarios, shell

    parser = argparse.ArgumentParser(prog="lab", description="QEMU-based virtual hardware lab for P2PDMA and T10 PI kernel work")
    parser.add_argument("--version", action="version", version=f"lab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and library logs")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for group in (builds, machines, scenarios, results, shell):
        group.add_commands(sub)
    return parser


def _internal_error(exc: BaseException) -> int:
    from lab.paths import cache_dir

    log = cache_dir() / "internal-errors.log"
    try:
        import traceback

        with open(log, "a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} lab {__version__}: {' '.join(sys.argv)}\n")
            traceback.print_exception(exc, file=f)
    except OSError:
        pass
    print(f"lab: internal error: {exc.__class__.__name__}: {str(exc)[:200]} (a bug in the lab; the traceback is in {log}, "
          f"or run with -v)", file=sys.stderr)
    return EX_SOFTWARE


def main(argv: list[str] | None = None) -> int:
    from lab import log
    from lab.lab import Terminated, install_signal_handlers
    from lab.settings import settings

    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    log.setup(verbose)
    install_signal_handlers()
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `lab ... | head` ends quietly
    try:
        settings()  # every LAB_* variable is checked once, before anything else
        if argv[:1] == ["run"] and len(argv) > 1 and argv[1].endswith(".py"):
            # lab run ./my_scenario.py: the file's scenario joins the registry under its own name.
            from lab.scenarios.framework import load_file

            argv[1] = load_file(Path(argv[1]))
        parser = build_parser()
        args = parser.parse_args(argv)
        args.parser = parser  # lab completion generates its script from the whole parser
        return args.func(args)
    except LabError as exc:
        if verbose:
            raise
        print(f"lab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lab: interrupted; guests stopped, results kept", file=sys.stderr)
        return 130
    except Terminated:
        print("lab: terminated; guests stopped, results kept", file=sys.stderr)
        return 143
    except OSError as exc:
        if verbose:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"lab: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except Exception as exc:
        if verbose:
            raise
        return _internal_error(exc)
