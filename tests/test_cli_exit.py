"""How `llamamon` ends its process: exit handlers and buffered output first, then no interpreter teardown."""

from __future__ import annotations

import llamamon
from tests.conftest import run_python


def test_the_console_entry_runs_exit_handlers_and_flushes_output_before_it_ends(tmp_path):
    done = run_python(
        """
        import atexit, sys
        atexit.register(lambda: print("exit handler ran"))  # buffered: reaches the pipe only if flushed
        sys.argv = ["llamamon", "--version"]
        from llamamon.cli import main
        main()
        print("not reached: main() ends the process")
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"llamamon, version {llamamon.__version__}", "exit handler ran"]


def test_a_non_daemon_thread_still_running_gets_the_normal_exit_that_waits_for_it(tmp_path):
    done = run_python(
        """
        import pathlib, sys, threading, time
        def late_write():
            time.sleep(0.5)
            pathlib.Path("written").write_text("yes")
        threading.Thread(target=late_write).start()
        sys.argv = ["llamamon", "--version"]
        from llamamon.cli import main
        main()
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "written").read_text() == "yes"


def test_a_failing_command_keeps_its_exit_code(tmp_path):
    done = run_python(
        """
        import sys
        sys.argv = ["llamamon", "runs", "--limit", "not-a-number"]
        from llamamon.cli import main
        main()
        """,
        tmp_path,
    )
    assert done.returncode == 2
    assert "not-a-number" in done.stderr
