"""A recorded run's metadata (runs/<id>.json): what is known as it starts, and what takes a moment to find out.

Why two steps: ``llamamon runs`` lists a run from the moment its job starts, so the first write cannot wait
for git on a big repository or for the CPU's model name; those are added beside the first samples
(:func:`complete_run_info`, run in a thread: it mostly waits on git, leaving the GIL to the sampler).
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from llamamon import __version__
from llamamon.launcher import Launch
from llamamon.masking import mask_command
from llamamon.samples import RunInfo, user_name

if TYPE_CHECKING:
    from llamamon.config import Config

log = logging.getLogger("llamamon.record")

GIT_TIMEOUT_S = 2.0


def new_run_info(
    command: list[str],
    name: str | None,
    tags: dict[str, str],
    config: Config,
    interval: float,
    host: str,
    start: float,
    launch: Launch | None = None,
) -> RunInfo:
    """The metadata of a run starting now: its id, the masked command line, where, by whom, in which job."""
    from llamamon.store.layout import sanitize_run_name
    from llamamon.store.runs import new_run_id

    launch = launch or Launch()
    return RunInfo(
        id=new_run_id(host, start),
        host=host,
        start=start,
        name=sanitize_run_name(name) if name else None,
        tags=dict(tags),
        command=mask_command(command, config.monitoring.secret_options),
        cwd=os.getcwd(),
        user=user_name(),
        python_version=platform.python_version(),
        llamamon_version=__version__,
        config_file=str(config.source) if config.source else None,
        interval=interval,
        source="record",
        run_group=launch.run_group,
        node_rank=launch.node_rank,
        rank=launch.rank,
    )


def complete_run_info(info: RunInfo, metrics_dir: Path) -> None:
    """Add the CPU model and the git state to ``info`` and write it; a failure is said, never raised."""
    from llamamon.collectors.system import cpu_model
    from llamamon.store.runs import write_run

    try:
        info.cpu_model = cpu_model()
        info.git_commit, info.git_dirty = _git_state(info.cwd)
        write_run(metrics_dir, info)
    except Exception as exc:  # noqa: BLE001 - metadata that cannot be found must not stop the recording
        log.warning("cannot complete the run metadata: %s", exc)


def _git_state(cwd: str) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout holding cwd, or (None, None) outside one or without git."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_S,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), (None if status is None else bool(status.strip()))
