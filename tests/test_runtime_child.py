"""The child runner with real processes: bytes, terminals, signals and exit codes.

The runner is driven in a subprocess (``python -c`` with ``llamamon.runtime.child.run``): it blocks
signals and owns fds 0-2, which must not happen inside pytest itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.conftest import llamamon_env
from tests.terminal_io import read_all, read_until

RUNNER = (
    "import sys\n"
    "from llamamon.runtime.child import SpawnError, run\n"
    "try:\n"
    "    sys.exit(run(sys.argv[1:]).exit_code)\n"
    "except SpawnError as exc:\n"
    "    sys.exit(print(exc, file=sys.stderr) or exc.exit_code)\n"
)
PY = sys.executable


def runner_argv(*child: str) -> list[str]:
    return [PY, "-c", RUNNER, *child]


def on_pty(argv: list[str], slave: int) -> subprocess.Popen[bytes]:
    """argv with the pty ``slave`` as its stdin, stdout and stderr, in a session of its own (as a shell starts a job)."""
    return subprocess.Popen(argv, env=llamamon_env(), stdin=slave, stdout=slave, stderr=slave, start_new_session=True)


def runner_on_pty(code: str, slave: int) -> subprocess.Popen[bytes]:
    """The runner of ``python -c code`` on the pty ``slave`` (``on_pty``)."""
    return on_pty(runner_argv(PY, "-c", code), slave)


def ready_then_wait_for(go: Path, seconds: float) -> str:
    """Job code: write "ready" and a newline, then wait up to ``seconds`` until the file ``go`` exists."""
    return (
        "import os, sys, time\n"
        "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
        f"deadline = time.monotonic() + {seconds}\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline: time.sleep(0.01)\n"
    )


def run_child(*child: str, **kw) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(runner_argv(*child), env=llamamon_env(), capture_output=True, timeout=60, check=False, **kw)


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_is_the_childs(code):
    assert run_child(PY, "-c", f"raise SystemExit({code})").returncode == code


def test_killed_child_gives_128_plus_signal():
    assert run_child(PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)").returncode == 137


def test_command_not_found_is_127():
    done = run_child("llamamon-no-such-command")
    assert done.returncode == 127
    assert b"command not found: llamamon-no-such-command" in done.stderr


def test_binary_output_is_byte_identical():
    code = (
        "import sys, os\n"
        "os.write(1, bytes(range(256)) * 3 + b'no newline')\n"
        "os.write(2, bytes(range(255, -1, -1)) + b'\\r\\x00')\n"
        "sys.stdout.buffer.write(b'\\xff' * 3_000_000)\n"  # large: many pipe buffers
    )
    direct = subprocess.run([PY, "-c", code], capture_output=True, check=True)
    through = run_child(PY, "-c", code)
    assert through.returncode == 0
    assert through.stdout == direct.stdout
    assert through.stderr == direct.stderr
    assert len(through.stdout) == 256 * 3 + 10 + 3_000_000


def test_stdin_is_passed_through():
    data = bytes(range(256)) * 1000
    done = run_child(PY, "-c", "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read()[::-1])", input=data)
    assert done.returncode == 0
    assert done.stdout == data[::-1]


def test_output_without_newline_appears_while_the_child_runs():
    code = "import sys; sys.stdout.write('prompt> '); sys.stdout.flush(); sys.stdout.write(input().upper())"
    with subprocess.Popen(
        runner_argv(PY, "-c", code), env=llamamon_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as proc:
        assert read_until(proc.stdout.fileno(), b"prompt> ") == b"prompt> "
        assert proc.poll() is None  # still waiting for its input: the prompt came through unbuffered
        proc.stdin.write(b"yes\n")
        proc.stdin.close()
        assert proc.stdout.read() == b"YES"
        assert proc.wait(timeout=30) == 0


def test_closed_reader_gives_the_child_sigpipe():
    # `llamamon record -- yes | head -1`: without llamamon, `yes` dies of SIGPIPE; so it must here.
    code = (
        "import signal, sys\nsignal.signal(signal.SIGPIPE, signal.SIG_DFL)\nwhile True: sys.stdout.write('y\\n' * 1000)"
    )
    with subprocess.Popen(runner_argv(PY, "-c", code), env=llamamon_env(), stdout=subprocess.PIPE) as proc:
        assert read_until(proc.stdout.fileno(), b"y\n")
        proc.stdout.close()
        assert proc.wait(timeout=30) == 128 + signal.SIGPIPE


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_signals_to_the_runner_reach_the_child_once(sig):
    code = (
        "import os, signal, sys, time\n"
        "got = []\n"
        f"signal.signal({int(sig)}, lambda *a: got.append(1))\n"
        "print('ready', flush=True)\n"
        "deadline = time.monotonic() + 20\n"
        "while not got and time.monotonic() < deadline: time.sleep(0.01)\n"
        "time.sleep(0.3)\n"  # a second, duplicated delivery would arrive in this window
        "print(len(got), flush=True)\n"
        "sys.exit(7)\n"
    )
    with subprocess.Popen(runner_argv(PY, "-c", code), env=llamamon_env(), stdout=subprocess.PIPE) as proc:
        assert read_until(proc.stdout.fileno(), b"ready\n") == b"ready\n"
        proc.send_signal(sig)
        assert proc.stdout.read() == b"1\n"
        assert proc.wait(timeout=30) == 7  # the runner itself survived the signal and reports the child


def test_terminal_ctrl_c_in_pipe_mode_reaches_the_child_once(tmp_path: Path):
    # stdin is a terminal whose Ctrl-C goes to the whole foreground group: the runner must not repeat it.
    master, slave = os.openpty()
    code = (
        "import signal, sys, time\n"
        "got = []\n"
        "signal.signal(signal.SIGINT, lambda *a: got.append(1))\n"
        "print('ready', flush=True)\n"
        "deadline = time.monotonic() + 20\n"
        "while not got and time.monotonic() < deadline: time.sleep(0.01)\n"
        "time.sleep(0.3)\n"
        "print(len(got), flush=True)\n"
    )

    def become_terminal_owner() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        with subprocess.Popen(
            runner_argv(PY, "-c", code),
            env=llamamon_env(),
            stdin=slave,
            stdout=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=become_terminal_owner,  # pytest is single-threaded here
        ) as proc:
            os.close(slave)
            assert read_until(proc.stdout.fileno(), b"ready\n") == b"ready\n"
            os.write(master, b"\x03")  # the terminal driver turns this into SIGINT for the foreground group
            assert proc.stdout.read() == b"1\n"
            assert proc.wait(timeout=30) == 0
    finally:
        os.close(master)


def _on_pty(argv: list[str], winsize: tuple[int, int], stdin_text: bytes = b"") -> tuple[int, bytes, list, list]:
    """Run argv with stdin/stdout/stderr on a fresh pty; return (exit, output, termios before, after)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", winsize[0], winsize[1], 0, 0))
    before = termios.tcgetattr(slave)
    proc = on_pty(argv, slave)
    try:
        out = read_until(master, b"ready")
        if stdin_text:
            os.write(master, stdin_text)
        out += read_all(master, proc)
        code = proc.wait(timeout=30)
        after = termios.tcgetattr(slave)
    finally:
        os.close(slave)
        os.close(master)
    return code, out, before, after


PTY_CHILD = (
    "import os, sys\n"
    "print(os.isatty(0), os.isatty(1), os.isatty(2), os.get_terminal_size())\n"
    "sys.stdout.write('ready'); sys.stdout.flush()\n"
    "line = sys.stdin.readline()\n"
    "sys.stdout.write('\\x1b[31mred\\x1b[0m ' + line[::-1] + '\\rbar 50%\\rbar 100%\\n')\n"
    "sys.stderr.write('err\\n')\n"
    "sys.exit(4)\n"
)


def test_pty_mode_child_sees_a_terminal_and_output_is_identical():
    direct = _on_pty([PY, "-c", PTY_CHILD], (30, 100), b"hello\n")
    through = _on_pty(runner_argv(PY, "-c", PTY_CHILD), (30, 100), b"hello\n")
    assert direct[0] == through[0] == 4
    assert b"True True True os.terminal_size(columns=100, lines=30)" in through[1]
    assert through[1] == direct[1]
    assert through[3] == through[2]  # the terminal's modes are restored afterwards


def test_pty_mode_restores_the_terminal_when_the_child_is_killed():
    code = "import os, sys; sys.stdout.write('ready'); sys.stdout.flush(); os.kill(os.getpid(), 9)"
    exit_code, _out, before, after = _on_pty(runner_argv(PY, "-c", code), (24, 80))
    assert exit_code == 137
    assert after == before


def test_kill_9_of_the_runner_leaves_the_child_running_with_its_output(tmp_path: Path):
    go = tmp_path / "go"
    done = tmp_path / "done"
    code = (
        "import os, sys, time\n"
        "print('before', flush=True)\n"
        f"deadline = time.monotonic() + 20\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline: time.sleep(0.01)\n"
        "for i in range(2000): print('after', i)\n"  # more than a pipe buffer: someone must keep reading
        "sys.stdout.flush()\n"
        f"open({str(done)!r}, 'w').close()\n"
    )
    with subprocess.Popen(runner_argv(PY, "-c", code), env=llamamon_env(), stdout=subprocess.PIPE) as proc:
        assert read_until(proc.stdout.fileno(), b"before\n") == b"before\n"
        proc.kill()
        assert proc.wait(timeout=30) == -signal.SIGKILL
        go.touch()
        rest = proc.stdout.read()  # EOF only once the child (and the keeper copying for it) are done
    assert rest.splitlines()[-1] == b"after 1999"
    assert done.exists()


def test_output_of_a_grandchild_that_outlives_the_child_still_arrives(tmp_path: Path):
    # The job exits at once, leaving a background process that writes later to the same stdout.
    release = tmp_path / "release"
    late = tmp_path / "late.py"
    late.write_text(
        "import os, time\n"
        "deadline = time.monotonic() + 20\n"
        f"while not os.path.exists({str(release)!r}) and time.monotonic() < deadline: time.sleep(0.01)\n"
        "print('late')\n"
    )
    code = f"import subprocess, sys; subprocess.Popen([sys.executable, {str(late)!r}]); print('early', flush=True)"
    with subprocess.Popen(runner_argv(PY, "-c", code), env=llamamon_env(), stdout=subprocess.PIPE) as proc:
        assert read_until(proc.stdout.fileno(), b"early\n") == b"early\n"
        assert proc.wait(timeout=30) == 0  # the runner does not wait for the grandchild …
        release.touch()
        assert proc.stdout.read() == b"late\n"  # … and its output is still delivered (by the keeper)


def test_pty_mode_follows_window_size_changes():
    code = (
        "import os, signal, sys, time\n"
        "got = []\n"
        "signal.signal(signal.SIGWINCH, lambda *a: got.append(os.get_terminal_size()))\n"
        "print(os.get_terminal_size()); sys.stdout.write('ready'); sys.stdout.flush()\n"
        "deadline = time.monotonic() + 20\n"
        "while not got and time.monotonic() < deadline: time.sleep(0.01)\n"
        "print(got)\n"
    )
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        with runner_on_pty(code, slave) as proc:
            first = read_until(master, b"ready")
            assert b"columns=80, lines=24" in first
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
            proc.send_signal(signal.SIGWINCH)  # what the terminal sends its foreground group on a resize
            rest = read_all(master, proc)
            assert b"columns=132, lines=50" in rest
            assert proc.wait(timeout=30) == 0
    finally:
        os.close(slave)
        os.close(master)


def _hook_runner(seen: Path, fail_on: bytes | None) -> str:
    return (
        "import sys\n"
        "from llamamon.runtime.child import run\n"
        f"log = open({str(seen)!r}, 'wb')\n"
        "def hook(stream, data):\n"
        "    log.write(b'%d:%d:' % (stream, len(data)) + data)\n"
        f"    if {fail_on!r} and {fail_on!r} in data: raise ValueError('a broken parser')\n"
        "code = run(sys.argv[1:], on_output=hook).exit_code\n"
        "log.close()\n"
        "sys.exit(code)\n"
    )


def _hook_chunks(seen: Path) -> dict[int, bytes]:
    record = seen.read_bytes()
    chunks: dict[int, bytes] = {1: b"", 2: b""}
    while record:
        stream, size, rest = record.split(b":", 2)
        chunks[int(stream)] += rest[: int(size)]
        record = rest[int(size) :]
    return chunks


def test_output_hook_sees_exactly_the_bytes_passed_through(tmp_path: Path):
    seen = tmp_path / "seen"
    child = "import os; os.write(1, bytes(range(256)) * 500); os.write(2, b'err'); os.write(1, b'no newline')"
    done = subprocess.run(
        [PY, "-c", _hook_runner(seen, None), PY, "-c", child],
        env=llamamon_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout == bytes(range(256)) * 500 + b"no newline"
    assert done.stderr == b"err"
    assert _hook_chunks(seen) == {1: done.stdout, 2: b"err"}


def test_a_failing_output_hook_costs_no_output(tmp_path: Path):
    seen = tmp_path / "seen"
    child = "import os; os.write(1, b'boom'); os.write(1, bytes(range(256)))"
    done = subprocess.run(
        [PY, "-c", _hook_runner(seen, b"boom"), PY, "-c", child],
        env=llamamon_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout == b"boom" + bytes(range(256))
    assert b"output parser failed" in done.stderr  # said once, not hidden
    assert _hook_chunks(seen)[1].startswith(b"boom")


def test_kill_9_of_the_runner_in_pty_mode_keeps_the_job_and_restores_the_terminal(tmp_path: Path):
    go = tmp_path / "go"
    done = tmp_path / "done"
    code = (
        ready_then_wait_for(go, 20)
        + "print('after the kill', flush=True)\n"  # no SIGHUP from a closed pty: the keeper holds it open
        f"open({str(done)!r}, 'w').close()\n"
    )
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    try:
        with runner_on_pty(code, slave) as proc:
            assert b"ready" in read_until(master, b"ready")
            assert termios.tcgetattr(slave) != before  # raw while the runner lives
            proc.kill()
            assert proc.wait(timeout=30) == -signal.SIGKILL
            go.touch()
            assert b"after the kill" in read_until(master, b"after the kill")
            deadline = time.monotonic() + 20
            while termios.tcgetattr(slave) != before and time.monotonic() < deadline:
                time.sleep(0.02)  # polling with a deadline
            assert termios.tcgetattr(slave) == before
        deadline = time.monotonic() + 20
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert done.exists()
    finally:
        os.close(slave)
        os.close(master)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def _job_pid(runner: int) -> int:
    """The runner's child that runs the job (not the keeper, which runs with -I -S)."""
    with open(f"/proc/{runner}/task/{runner}/children") as fh:
        pids = [int(p) for p in fh.read().split()]
    for pid in pids:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"-I\0-S\0" not in fh.read():
                return pid
    raise AssertionError(f"no job among {pids}")


def _poll(predicate, deadline_s: float = 20) -> bool:
    deadline = time.monotonic() + deadline_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)  # polling with a deadline
    return predicate()


def test_ctrl_z_in_pty_mode_stops_the_runner_too_and_fg_resumes_both(tmp_path: Path):
    go = tmp_path / "go"
    code = ready_then_wait_for(go, 30) + "print('resumed', flush=True)\n"
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    try:
        with runner_on_pty(code, slave) as proc:
            job = None
            try:
                assert b"ready" in read_until(master, b"ready")
                job = _job_pid(proc.pid)
                os.write(master, b"\x1a")  # Ctrl-Z, passed through the raw terminal to the job's own pty
                assert _poll(lambda: _state(proc.pid) == "T")  # the runner stopped, as a shell job does
                # and the job with it (SIGSTOP takes effect when the job is next scheduled: poll)
                assert _poll(lambda: _state(job) == "T")
                assert termios.tcgetattr(slave) == before  # … handing the terminal back in its own modes
                proc.send_signal(signal.SIGCONT)  # what `fg` sends
                assert _poll(lambda: termios.tcgetattr(slave) != before)  # raw again
                go.touch()
                assert _poll(lambda: _state(job) != "T")  # the job was continued too
                assert b"resumed" in read_until(master, b"resumed")
                assert proc.wait(timeout=30) == 0
                assert termios.tcgetattr(slave) == before
            finally:  # a failed check must not leave a stopped runner for Popen's exit to wait on forever
                for pid in (job, proc.pid):
                    if pid is not None and proc.poll() is None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(slave)
        os.close(master)
