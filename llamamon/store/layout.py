"""Where things live in the metrics folder, how run ids look and which names are safe: pure functions.

Every path the store writes is computed here, so readers, writers, the journal fold, compaction and
gc agree on one layout::

    <metrics_dir>/group=<group>/date=<YYYY-MM-DD UTC>/run=<run_id>/<writer>-<seq>.parquet
    <metrics_dir>/group=<group>/date=<YYYY-MM-DD UTC>/run=<run_id>/compact-<token>.parquet
    <metrics_dir>/runs/<run_id>.json
    <metrics_dir>/_journal/<run_id>/<writer>-<seq>.jsonl
    <metrics_dir>/_compact/<token>.json                     compaction intents, .lock
    <metrics_dir>/alerts/state.json                        notifications sent (record and watch share it)
    <metrics_dir>/alerts/engine-<scope>.json               a live evaluator's alert states (``watch``)
    <metrics_dir>/prometheus/llamamon-<host>-<name>.prom   unless monitoring.textfile_dir says elsewhere
    <metrics_dir>/_shipped.jsonl                           a bucket mirror's ledger (store/location.py)
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from datetime import datetime, timezone
from pathlib import Path

from llamamon.catalog import GROUPS
from llamamon.errors import ConfigError, StoreError

JOURNAL_DIR = "_journal"
RUNS_DIR = "runs"
COMPACT_DIR = "_compact"
ALERTS_DIR = "alerts"
TEXTFILE_DIR = "prometheus"
DATA_SUFFIX = ".parquet"
JOURNAL_SUFFIX = ".jsonl"
COMPACT_PREFIX = "compact-"
SHIPPED_LEDGER = "_shipped.jsonl"

RUN_ID_RE = re.compile(r"^(?P<stamp>\d{8}T\d{6}Z)-(?P<host>[A-Za-z0-9-]{1,32})-(?P<token>[0-9a-f]{4})$")
_HOST_BAD = re.compile(r"[^A-Za-z0-9-]+")
_NAME_BAD = re.compile(r"[^\w.\-+@=]+", re.UNICODE)
MAX_NAME = 64


def utc_date(t: float) -> str:
    """The ``date=`` partition of a Unix time: its UTC calendar day."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d")


def host_slug(host: str) -> str:
    """A hostname reduced to what a run id (and so a folder name) can hold: ``[A-Za-z0-9-]``, <= 32 chars."""
    slug = _HOST_BAD.sub("-", host.split(".")[0] if host and not host[0].isdigit() else host)
    slug = re.sub(r"-+", "-", slug).strip("-")[:32].strip("-")
    return slug or "host"


def new_run_id(host: str, start: float, token: str | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ-<host>-<4 hex>``: sorts by start second, unique across hosts, safe as a folder name.

    The random token separates runs started in the same second on the same host (1 in 65536 clash).
    """
    stamp = datetime.fromtimestamp(start, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    token = token if token is not None else secrets.token_hex(2)
    run_id = f"{stamp}-{host_slug(host)}-{token}"
    if not RUN_ID_RE.match(run_id):
        raise ValueError(f"bad run id token {token!r} (4 lowercase hex digits)")
    return run_id


def is_run_id(text: str) -> bool:
    return RUN_ID_RE.match(text) is not None


def check_run_id(run_id: str) -> str:
    """Refuse a run id that could escape its folder (ids come from env vars and the command line)."""
    if not run_id or run_id.startswith(".") or any(c in run_id for c in "/\\\0"):
        raise StoreError(f"invalid run id {run_id!r}")
    return run_id


def sanitize_run_name(name: str) -> str:
    """A user-given run name made safe to show, store and match: no ``/``, no ``..``, no control characters.

    Runs of unsafe characters become ``-``; a name with nothing usable left is a ConfigError.
    """
    text = unicodedata.normalize("NFC", name).strip()
    text = _NAME_BAD.sub("-", text)
    text = re.sub(r"\.{2,}", ".", text)
    text = re.sub(r"-{2,}", "-", text).strip("-.")[:MAX_NAME].strip("-.")
    if not text:
        raise ConfigError(f"run name {name!r} has no usable characters (letters, digits, . - _)", path="name")
    return text


def check_group(group: str) -> str:
    if group not in GROUPS:
        raise StoreError(f"unknown metric group {group!r} (one of {', '.join(GROUPS)})")
    return group


def partition_dir(metrics_dir: Path, group: str, date: str, run_id: str) -> Path:
    return Path(metrics_dir) / f"group={check_group(group)}" / f"date={date}" / f"run={check_run_id(run_id)}"


def parse_partition(path: Path) -> tuple[str, str, str] | None:
    """(group, date, run) of a partition folder or a file inside one, else None."""
    parts = Path(path).parts
    for i in range(len(parts) - 2):
        g, d, r = parts[i : i + 3]
        if g.startswith("group=") and d.startswith("date=") and r.startswith("run="):
            return g[6:], d[5:], r[4:]
    return None


def writer_id(pid: int, token: str | None = None) -> str:
    """One writing process's part of file names: pid plus randomness so a reused pid never clashes."""
    return f"{pid}-{token if token is not None else secrets.token_hex(3)}"


def segment_name(writer: str, seq: int) -> str:
    """Stem shared by a journal segment and the Parquet files folded from it (the fold's idempotence key)."""
    return f"{writer}-{seq:06d}"


def data_file(metrics_dir: Path, group: str, date: str, run_id: str, stem: str) -> Path:
    return partition_dir(metrics_dir, group, date, run_id) / f"{stem}{DATA_SUFFIX}"


def journal_dir(metrics_dir: Path, run_id: str | None = None) -> Path:
    root = Path(metrics_dir) / JOURNAL_DIR
    return root if run_id is None else root / check_run_id(run_id)


def runs_dir(metrics_dir: Path) -> Path:
    return Path(metrics_dir) / RUNS_DIR


def run_file(metrics_dir: Path, run_id: str) -> Path:
    return runs_dir(metrics_dir) / f"{check_run_id(run_id)}.json"


def compaction_dir(metrics_dir: Path) -> Path:
    return Path(metrics_dir) / COMPACT_DIR


def shipped_ledger(metrics_dir: Path) -> Path:
    """A bucket mirror's record of the files it shipped or downloaded (store/location.py)."""
    return Path(metrics_dir) / SHIPPED_LEDGER


def alert_ledger_file(metrics_dir: Path) -> Path:
    """The notifications sent, shared by every ``record`` and ``watch`` on the folder; its lock beside it."""
    return Path(metrics_dir) / ALERTS_DIR / "state.json"


def alert_states_file(metrics_dir: Path, scope: str) -> Path:
    """A live evaluator's alert states kept between its processes (``scope``: ``watch``)."""
    return Path(metrics_dir) / ALERTS_DIR / f"engine-{scope}.json"


def textfile_folder(metrics_dir: str | Path, textfile_dir: str | Path | None = None) -> Path:
    """Where .prom files go: ``monitoring.textfile_dir`` if set, else ``<metrics_dir>/prometheus``."""
    return Path(textfile_dir) if textfile_dir is not None else Path(metrics_dir) / TEXTFILE_DIR


def job_fields_file(metrics_dir: Path, run_id: str) -> Path:
    """What a job set with ``llamamon.init`` for a run the recorder owns: merged into ``<id>.json`` by the
    store, never overwritten by the recorder (no ``.json`` suffix, so run listings skip it)."""
    return runs_dir(metrics_dir) / f"{check_run_id(run_id)}.job"


def is_data_file(name: str) -> bool:
    """Files readers take: ``*.parquet`` not hidden (atomic_write's temporaries start with a dot)."""
    return name.endswith(DATA_SUFFIX) and not name.startswith(".")


def iter_partitions(
    metrics_dir: Path,
    groups: set[str] | None = None,
    runs: set[str] | None = None,
    min_date: str | None = None,
) -> list[tuple[str, str, str, Path]]:
    """Every (group, date, run, folder) in the store, pruned by folder name before any file is opened."""
    found: list[tuple[str, str, str, Path]] = []
    root = Path(metrics_dir)
    for gdir in _subdirs(root, "group="):
        group = gdir.name[6:]
        if groups is not None and group not in groups:
            continue
        for ddir in _subdirs(gdir, "date="):
            date = ddir.name[5:]
            if min_date is not None and date < min_date:
                continue
            for rdir in _subdirs(ddir, "run="):
                run = rdir.name[4:]
                if runs is None or run in runs:
                    found.append((group, date, run, rdir))
    return found


def _subdirs(folder: Path, prefix: str) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [e for e in entries if e.name.startswith(prefix) and e.is_dir()]
