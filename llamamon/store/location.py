"""Where a command's metrics live: a folder, or a bucket mirrored by a local folder.

Every command resolves ``--metrics-dir`` / ``monitoring.metrics_path`` with :func:`open_location`. For a plain
path, ``Location.root`` is that folder and nothing else happens (``bucket`` is None). For ``s3://bucket/prefix``,
``root`` is a persistent local mirror (``$LLAMAMON_CACHE_DIR/buckets/<bucket>/<prefix>``, default cache
``~/.cache/llamamon``) with the store's usual layout, journal included, so the store's code stays Path-based
and crash safety never depends on the network:

* writing: files are finished locally as today, then *shipped* (one PUT per file, to the same relative key)
  and recorded in the mirror's ledger (``_shipped.jsonl``: key, size, mtime). A file is *waiting* while the
  ledger lacks it at its current size and mtime; a kill between a PUT and its ledger line only means the same
  bytes go to the same key again. Only data files and run metadata travel, never journals or hidden
  temporaries.
* reading: :meth:`Location.pull` downloads the run metadata that changed, then only the partitions of the
  runs asked for (``group=*/date=<the run's days>/run=<id>/``), atomically; objects deleted remotely leave
  the mirror, files still waiting never do.
* deleting: a remote object goes only because a command removed its file (compaction's superseded files, as
  the compacted file's footer names them; gc's expired runs, seen by :meth:`Location.tracking`), never
  because a mirror file is missing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from llamamon.catalog import GROUPS
from llamamon.fsutil import atomic_write
from llamamon.store import open_store
from llamamon.store.bucket import Bucket, BucketError, is_bucket_url, parse_url
from llamamon.store.layout import (
    COMPACT_PREFIX,
    RUNS_DIR,
    is_data_file,
    iter_partitions,
    runs_dir,
    shipped_ledger,
)

if TYPE_CHECKING:
    from llamamon.store.runs import RunInfo

log = logging.getLogger("llamamon.store")

CACHE_ENV = "LLAMAMON_CACHE_DIR"
DOWNLOADS_AT_ONCE = 8  # GETs in flight during a pull
RUNS_LISTED_ONE_BY_ONE = 4  # above this many runs, a pull lists whole days of a group (location.pull)
_RUN_SUFFIXES = (".json", ".job")  # run metadata, and what a job set with llamamon.init


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llamamon")


def mirror_folder(url: str) -> Path:
    """The local folder that mirrors a bucket prefix (one per bucket and prefix, kept between commands)."""
    remote = parse_url(url)
    return cache_dir() / "buckets" / remote.bucket / (remote.prefix or "_root")


class Ledger:
    """What the mirror shipped or downloaded, append-only: {key: (size, mtime_ns) of the local file}.

    One JSON line per event; a torn last line (a kill mid-write) is skipped, which at worst re-ships a file.
    """

    def __init__(self, root: Path) -> None:
        self.path = shipped_ledger(root)
        self.entries: dict[str, tuple[int, int, int]] = {}  # key -> (size, mtime_ns, remote mtime_ns or 0)
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        lines = text.splitlines()
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                item = json.loads(line)
                if item.get("gone"):
                    self.entries.pop(item["k"], None)
                else:
                    self.entries[item["k"]] = (int(item["s"]), int(item["m"]), int(item.get("r", 0)))
        if len(lines) > 2 * len(self.entries) + 1000:  # mostly superseded lines: rewrite it, atomically
            rows = ({"k": k, "s": s, "m": m, "r": r} for k, (s, m, r) in self.entries.items())
            atomic_write(self.path, "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows).encode())

    def _append(self, item: dict[str, object]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:  # one short line per write: O_APPEND keeps it whole
            fh.write(json.dumps(item, separators=(",", ":")) + "\n")

    def record(self, key: str, local: os.stat_result, remote_mtime: int = 0) -> None:
        self.entries[key] = (local.st_size, local.st_mtime_ns, remote_mtime)
        self._append({"k": key, "s": local.st_size, "m": local.st_mtime_ns, "r": remote_mtime})

    def forget(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            self._append({"k": key, "gone": 1})

    def current(self, key: str, st: os.stat_result) -> bool:
        entry = self.entries.get(key)
        return entry is not None and entry[:2] == (st.st_size, st.st_mtime_ns)


@dataclass
class Location:
    """A command's metrics folder, and the bucket it mirrors when there is one."""

    root: Path
    bucket: Bucket | None = None
    _ledger: Ledger | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """What messages name: the bucket URL (no query) or the folder."""
        return self.bucket.url if self.bucket is not None else str(self.root)

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.root)
        return self._ledger

    # -- shipping ---------------------------------------------------------------------------------

    def local_files(self, runs: set[str] | None = None) -> dict[str, Path]:
        """{key: path} of every file that travels (of ``runs`` only, when given): data files (not temporaries)
        and run metadata."""
        found: dict[str, Path] = {}
        for _g, _d, _r, folder in iter_partitions(self.root, runs=runs):
            for entry in os.scandir(folder):
                if is_data_file(entry.name) and entry.is_file():
                    found[Path(entry.path).relative_to(self.root).as_posix()] = Path(entry.path)
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(runs_dir(self.root)):
                wanted = runs is None or entry.name.rsplit(".", 1)[0] in runs
                if wanted and entry.name.endswith(_RUN_SUFFIXES) and not entry.name.startswith("."):
                    found[f"{RUNS_DIR}/{entry.name}"] = Path(entry.path)
        return found

    def waiting(self, runs: set[str] | None = None) -> list[tuple[str, Path, int]]:
        """(key, path, size) of the files not shipped at their current size and mtime, oldest first."""
        if self.bucket is None:
            return []
        out: list[tuple[str, Path, int, int]] = []
        for key, path in self.local_files(runs).items():
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                if not self.ledger.current(key, st):
                    out.append((key, path, st.st_size, st.st_mtime_ns))
        out.sort(key=lambda item: (item[0].startswith(RUNS_DIR), item[3]))  # data before the runs that list it
        return [(key, path, size) for key, path, size, _ in out]

    def ship(self, deadline: float | None = None, runs: set[str] | None = None) -> int:
        """PUT every waiting file (of ``runs`` only, when given; until ``deadline``, a time.monotonic()); returns
        how many are left waiting."""
        if self.bucket is None:
            return 0
        left = self.waiting(runs)
        while left:
            if deadline is not None and time.monotonic() > deadline:
                return len(left)
            key, path, _ = left.pop(0)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            self.bucket.put(path, key)
            if path.name.startswith(COMPACT_PREFIX):
                self._drop_superseded(key, path)
            self.ledger.record(key, st)
        return 0

    def _drop_superseded(self, key: str, path: Path) -> None:
        """Compaction decided these: the files a compacted file replaces, once gone locally, go remotely too."""
        from llamamon.store.reader import check_file

        verdict = check_file(path)
        if verdict is None or self.bucket is None:
            return
        folder = key.rsplit("/", 1)[0]
        for name in verdict[1]:
            if not (path.parent / name).exists():
                self.bucket.delete(f"{folder}/{name}")
                self.ledger.forget(f"{folder}/{name}")

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        """Around a command that removes files on purpose (gc, compact): afterwards ship what it wrote and
        delete remotely what it removed (files shipped before it began and gone after)."""
        before = set(self.local_files()) & set(self.ledger.entries) if self.bucket is not None else set()
        yield
        if self.bucket is None:
            return
        self.ship()
        present = self.local_files()
        for key in sorted(before - set(present)):
            self.bucket.delete(key)
            self.ledger.forget(key)

    def data_listing(self) -> dict[str, int]:
        """{key: size} of every data object in the bucket, from one listing per group (nothing downloaded)."""
        assert self.bucket is not None
        found: dict[str, int] = {}
        for group in GROUPS:
            found.update({k: size for k, (size, _) in self.bucket.listing(f"group={group}/").items() if _travels(k)})
        return found

    def delete(self, keys: list[str]) -> None:
        """Delete these data objects from the bucket, and their copies (and emptied folders) from the mirror."""
        assert self.bucket is not None
        for key in keys:
            self.bucket.delete(key)
            self.ledger.forget(key)
            path = self.root / key
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(OSError):  # a folder still holding anything stays, and so do its parents
                for folder in list(path.parents)[:3]:  # run=, date=, group=
                    folder.rmdir()

    # -- pulling ----------------------------------------------------------------------------------

    def pull(self, runs: set[str] | None = None) -> None:
        """Bring the mirror up to date: every run's metadata, then the data of ``runs`` (None: all runs)."""
        if self.bucket is None:
            return
        self._pull_metadata()
        self._pull_data(runs)

    def pull_chosen(self, choose: Callable[[Path], Sequence[RunInfo]]) -> list[RunInfo]:
        """The runs ``choose`` picks from the run metadata under ``root``, with their data pulled.

        Why one step: a bucket's metadata comes down first and the chosen runs' partitions after it, so a
        command on one run or one group never downloads another's data.
        """
        if self.bucket is not None:
            self._pull_metadata()
        runs = list(choose(self.root))
        if self.bucket is not None and runs:
            self._pull_data({run.id for run in runs})
        return runs

    def _pull_metadata(self) -> None:
        assert self.bucket is not None
        self._sync(f"{RUNS_DIR}/", self.bucket.listing(f"{RUNS_DIR}/"))

    def _pull_data(self, runs: set[str] | None) -> None:
        assert self.bucket is not None
        if runs is None:
            listings: dict[str, set[str] | None] = {f"group={group}/": None for group in GROUPS}
        else:
            listings = dict(self._data_listings(runs))
        for prefix, wanted in listings.items():
            self._sync(prefix, self.bucket.listing(prefix), wanted)
        bucket = self.bucket
        log.debug(
            "%s: %d objects (%d bytes) downloaded", bucket.url, bucket.downloaded_objects, bucket.downloaded_bytes
        )

    def _data_listings(self, runs: set[str]) -> dict[str, set[str]]:
        """{key prefix to list: the runs wanted under it}: partition pruning by group, day and run.

        A few runs: one listing per run partition (``group=g/date=d/run=<id>/``); many: one per group and day,
        kept to the wanted runs (fewer requests, and still no object of another run downloaded). A run without
        readable metadata is looked for in every day of each group.
        """
        days = {run_id: self._run_days(run_id) for run_id in sorted(runs)}
        listings: dict[str, set[str]] = {}
        for run_id, span in days.items():
            for group in GROUPS:
                if span is None:
                    prefixes = [f"group={group}/"]
                elif len(runs) <= RUNS_LISTED_ONE_BY_ONE:
                    prefixes = [f"group={group}/date={day}/run={run_id}/" for day in span]
                else:
                    prefixes = [f"group={group}/date={day}/" for day in span]
                for prefix in prefixes:
                    listings.setdefault(prefix, set()).add(run_id)
        return listings

    def _run_days(self, run_id: str) -> list[str] | None:
        """The UTC days (``date=`` partitions) a run spans, None when its metadata cannot be read."""
        from llamamon.store.runs import read_run

        try:
            info = read_run(self.root, run_id)
        except Exception:  # noqa: BLE001 - unknown or unreadable: the caller looks in every day
            return None
        first = datetime.fromtimestamp(info.start, tz=timezone.utc).date()
        last = datetime.fromtimestamp(info.end if info.end is not None else time.time(), tz=timezone.utc).date()
        return [(first + timedelta(days=i)).isoformat() for i in range(max(0, (last - first).days) + 1)]

    def _sync(self, prefix: str, remote: dict[str, tuple[int, int]], wanted: set[str] | None = None) -> None:
        """Make the mirror's files under ``prefix`` (of the ``wanted`` runs only, when given) match the remote
        listing, waiting files aside."""
        assert self.bucket is not None
        remote = {k: v for k, v in remote.items() if _travels(k) and (wanted is None or _run_of(k) in wanted)}
        fetch: list[str] = []
        for key, (size, mtime) in remote.items():
            local = self.root / key
            entry = self.ledger.entries.get(key)
            try:
                st = local.stat()
            except FileNotFoundError:
                st = None
            if st is not None and entry is not None and not self.ledger.current(key, st):
                continue  # changed here since: ours to ship, not theirs to overwrite
            if st is not None and entry is not None and entry[0] == size and entry[2] in (0, mtime):
                continue  # what we shipped or last downloaded
            if st is not None and entry is None and st.st_size == size and not key.startswith(RUNS_DIR):
                self.ledger.record(key, st, mtime)  # shipped, then killed before the ledger line
                continue
            fetch.append(key)
        # Why a pool: an object store answers many GETs at once much faster than one after another (a
        # 64-host job is hundreds of objects); files are written and noted here, in order, one at a time.
        with ThreadPoolExecutor(max_workers=DOWNLOADS_AT_ONCE) as pool:
            for key, data in zip(fetch, pool.map(self.bucket.get, fetch), strict=True):
                local = self.root / key
                atomic_write(local, data)
                self.ledger.record(key, local.stat(), remote[key][1])
        self._drop_deleted(prefix, remote, wanted)

    def _drop_deleted(self, prefix: str, remote: dict[str, tuple[int, int]], wanted: set[str] | None) -> None:
        """Mirror files shipped or pulled before whose object is gone (another host's gc or compaction)."""
        gone = [k for k in self.ledger.entries if k.startswith(prefix) and k not in remote]
        for key in [k for k in gone if wanted is None or _run_of(k) in wanted]:
            path = self.root / key
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                if not self.ledger.current(key, st):
                    continue  # changed since: waiting to ship
                path.unlink()
            self.ledger.forget(key)


def _run_of(key: str) -> str | None:
    """The run id of a data key (``group=g/date=d/run=<id>/file``), None for anything else."""
    parts = key.split("/")
    return parts[2][4:] if len(parts) == 4 and parts[2].startswith("run=") else None


def _travels(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    if key.startswith(f"{RUNS_DIR}/"):
        return name.endswith(_RUN_SUFFIXES) and not name.startswith(".") and key.count("/") == 1
    return is_data_file(name) and key.startswith("group=") and ".." not in key.split("/")


def resolved(path_or_url: str | os.PathLike[str]) -> str | Path:
    """A folder made absolute (the recorder's job and watch may change directory), a bucket URL as it is."""
    return path_or_url if is_bucket_url(path_or_url) else Path(path_or_url).absolute()  # type: ignore[return-value]


def local_root(path_or_url: str | os.PathLike[str]) -> Path:
    """The folder a path or URL is read from on this machine, without touching the network: the path
    itself, or a bucket's mirror (for what runs inside a job and for the config check)."""
    text = os.fspath(path_or_url)
    return mirror_folder(text) if is_bucket_url(text) else Path(text)


def open_location(path_or_url: str | os.PathLike[str], *, sync: bool = True) -> Location:
    """The store at a folder or bucket URL, opened (``open_store``); for a bucket, with ``sync`` (every command
    but ``record`` and ``doctor``) the bucket is checked and what waits is shipped first.

    Raises BucketError (one line naming the URL, exit 2) when the bucket cannot be used.
    """
    text = os.fspath(path_or_url)
    if not is_bucket_url(text):
        return Location(open_store(Path(text)))
    location = Location(open_store(mirror_folder(text)), Bucket(parse_url(text)))
    if sync:
        assert location.bucket is not None
        location.bucket.check()
        location.ship()
    return location


__all__ = ["BucketError", "Location", "mirror_folder", "open_location", "resolved"]
