"""The ``llamamon`` command line: a thin layer that parses, calls, prints and translates errors.

Only click, the standard library and light llamamon modules are imported here and in the command
modules' top levels, so ``llamamon --help`` stays fast; heavy work is imported inside each command.
"""

from __future__ import annotations

import importlib
import sys

import click

from llamamon import __version__
from llamamon.errors import LlamamonError

# name -> (module, attribute) of every command; each module stays light at import time.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("llamamon.cli.init", "init_command"),
    "record": ("llamamon.cli.record", "record_command"),
    "runs": ("llamamon.cli.runs", "runs_command"),
    "alerts": ("llamamon.cli.alerts", "alerts_command"),
    "compact": ("llamamon.cli.compact", "compact_command"),
    "gc": ("llamamon.cli.gc", "gc_command"),
    "doctor": ("llamamon.cli.doctor", "doctor_command"),
    "watch": ("llamamon.cli.watch", "watch_command"),
    "export": ("llamamon.cli.export", "export_command"),
    "report": ("llamamon.cli.report", "report_command"),
}


class _Commands(click.Group):
    """The top-level group, importing only the command that runs.

    Why: building every command's options at start-up costs ~10 ms that `llamamon record` pays once per
    job; only ``--help`` needs them all.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attr)


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Diagnostics go to stderr through logging, configured once for the whole process.

    logging is imported here, not at the top: ``llamamon --help`` never needs it (12 ms of start-up).
    """
    import logging

    class _Formatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"llamamon: {record.getMessage()}"

    level = logging.ERROR if quiet else logging.DEBUG if verbose > 0 else logging.INFO
    root = logging.getLogger("llamamon")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llamamon")
def cli() -> None:
    """Record, alert on and report the metrics of ML training and inference jobs."""
    setup_logging()


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place where llamamon errors become a line on stderr and an exit code."""
    try:
        # Why keep the result: with standalone_mode=False click returns ctx.exit(n)'s n instead of exiting.
        code = cli.main(args=argv, prog_name="llamamon", standalone_mode=False)
    except LlamamonError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        # Why: `llamamon runs | head` closes stdout early; that is not an error worth a traceback.
        sys.stderr.close()
        sys.exit(1)
    code = code if isinstance(code, int) else 0
    if argv is None:  # main() is the process (console script, python -m llamamon), not a caller's function
        _end_process(code)
    sys.exit(code)


def _end_process(code: int) -> None:
    """Exit without the interpreter's teardown once the command's work is done and its output flushed.

    Why: tearing down the modules a command loaded (pyarrow, numpy, polars) takes ~100 ms after the work
    is over, a quarter of a short `llamamon record`. Exit handlers still run (they close writers and
    flush logging); a command that left a non-daemon thread running gets the normal exit, which waits
    for it. Returns only in that case.
    """
    import atexit
    import contextlib
    import os
    import threading

    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's; elsewhere the normal exit
    if run_exit_handlers is None or any(
        thread.is_alive() and not thread.daemon
        for thread in threading.enumerate()
        if thread is not threading.main_thread()
    ):
        return
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            stream.flush()
    os._exit(code)
