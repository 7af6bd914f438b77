"""What the launcher's environment says about a run: the multi-node job it belongs to and its node's rank.

Why one module for ``llamamon record`` and ``llamamon.init``: both must put the runs of one job in one run
group from the same variables, in the same order, or a job half recorded and half logged would be two.
Pure (stdlib only, no llamamon layer), so the job side imports it cheaply.

Precedence of the run group, first found wins:

1. ``--group NAME`` (record) — what the user typed;
2. ``LLAMAMON_GROUP`` — the same, set once for a whole script;
3. ``torchrun ... --rdzv-id X`` / ``--rdzv_id=X`` in the command record wraps (torchrun puts
   ``TORCHELASTIC_RUN_ID`` in its workers' environment only, not in record's);
4. ``TORCHELASTIC_RUN_ID`` — record (or a job) started by torchrun;
5. ``SLURM_JOB_ID`` — record started by ``srun``/``sbatch``.

torchrun's default id ``none`` names no job and is skipped.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llamamon.errors import ConfigError

LAUNCHER_GROUP_ENV = ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID")  # after --group, LLAMAMON_GROUP, --rdzv-id
# Where launchers put the node's index in the job: torchrun (NODE_RANK, or GROUP_RANK in its workers), SLURM;
# the run's node_rank here, and its rows' node_rank label (log_destination.rank_labels).
NODE_RANK_ENV = ("NODE_RANK", "GROUP_RANK", "SLURM_NODEID")
MAX_GROUP = 64
_GROUP_OK = re.compile(r"[\w.\-+@=]+")
# torchrun's options that take no value (every other one does), dashes for underscores.
_TORCHRUN_FLAGS = {"--standalone", "--no-python", "--run-path", "-m", "--module", "--virtual-local-rank"}
_TORCHRUN = re.compile(r"(^|/)(torchrun|torch\.distributed\.run|torch\.distributed\.launch)$")


@dataclass(frozen=True, slots=True)
class Launch:
    """The run group and ranks the launcher gave this process (None where it says nothing)."""

    run_group: str | None = None
    node_rank: int | None = None
    rank: int | None = None


def check_group_name(name: str, where: str = "--group") -> str:
    """The group name, or a ConfigError naming ``where``. Why refused rather than rewritten as run names are:
    two different job ids must never become one group; and a name typed back as ``--group`` and perhaps one
    day a path component (a partition, a bucket prefix) must hold no path characters."""
    text = unicodedata.normalize("NFC", name).strip()
    if not text:
        raise ConfigError("a run group name cannot be empty", path=where)
    if len(text) > MAX_GROUP or text.startswith(".") or not _GROUP_OK.fullmatch(text):
        raise ConfigError(
            f"{name!r} is not a usable run group name (letters, digits and . _ - + @ =, at most {MAX_GROUP}, "
            "not starting with a dot)",
            path=where,
        )
    return text


def torchrun_option(command: Sequence[str], option: str) -> str | None:
    """The value of ``--<option>`` (dashes or underscores, ``--opt X`` or ``--opt=X``) in a torchrun command
    line (``torchrun ...`` or ``python -m torch.distributed.run ...``), before the training script; else None."""
    args = list(command)
    start = _torchrun_start(args)
    if start is None:
        return None
    wanted = "--" + option.replace("_", "-")
    i = start
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-"):
            return None  # the training script: what follows is its own arguments
        key, eq, value = arg.partition("=")
        key = key.replace("_", "-")
        if key == wanted:
            if eq:
                return value
            return args[i + 1] if i + 1 < len(args) else None
        i += 1 if eq or key in _TORCHRUN_FLAGS else 2
    return None


def _torchrun_start(args: list[str]) -> int | None:
    """Index of the first torchrun argument in ``args``, or None when the command is not torchrun."""
    if args and _TORCHRUN.search(args[0]):
        return 1
    for i, arg in enumerate(args[:-1]):
        if arg == "-m" and args[i + 1] in ("torch.distributed.run", "torch.distributed.launch"):
            return i + 2
    return None


def is_torchrun(command: Sequence[str]) -> bool:
    return _torchrun_start(list(command)) is not None


def launch_from(env: Mapping[str, str] | None = None, command: Sequence[str] = (), group: str | None = None) -> Launch:
    """The run group (see the module's precedence) and ranks for a process with ``env`` running ``command``.

    Raises ConfigError, naming the flag or variable, for a group name with path characters."""
    env = os.environ if env is None else env
    return Launch(_group(env, command, group), *ranks_from(env, command))


def ranks_from(env: Mapping[str, str], command: Sequence[str] = ()) -> tuple[int | None, int | None]:
    """(node rank, global rank): torchrun's ``--node-rank`` in ``command`` or the launcher's node variables;
    ``RANK``, else ``SLURM_PROCID`` unless ``command`` is torchrun (whose workers are the ranks then)."""
    torchrun = is_torchrun(command)
    node_rank = _int(torchrun_option(command, "node-rank")) if torchrun else None
    if node_rank is None:
        node_rank = next((v for k in NODE_RANK_ENV if (v := _int(env.get(k))) is not None), None)
    rank = _int(env.get("RANK"))
    if rank is None and not torchrun:
        rank = _int(env.get("SLURM_PROCID"))  # srun starts one task per rank
    return node_rank, rank


def _group(env: Mapping[str, str], command: Sequence[str], group: str | None) -> str | None:
    if group is not None:
        return check_group_name(group, "--group")
    if value := env.get("LLAMAMON_GROUP", "").strip():
        return check_group_name(value, "LLAMAMON_GROUP")
    rdzv = torchrun_option(command, "rdzv-id")
    if rdzv and rdzv != "none":
        return check_group_name(rdzv, "torchrun --rdzv-id")
    for name in LAUNCHER_GROUP_ENV:
        value = env.get(name, "").strip()
        if value and value != "none":
            return check_group_name(value, name)
    return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None and text.strip() else None
    except ValueError:
        return None
