"""Whether the recorded job said that it reports its metrics through llamamon itself.

Why: the Hugging Face Trainer prints every dict it logs. With ``LlamamonCallback`` recording the same dict
through ``llamamon.log`` (exact, with its step), parsing the printed copy as well would store every value
twice, once rounded and without a step. The job cannot change ``record``'s options, so ``record`` hands it a
path (``LLAMAMON_OUTPUT_CLAIM``). ``llamamon.api.claim_output`` (:func:`claim`) writes the job's clock time
there before the Trainer prints anything, and ``record`` drops what it parses from that time on. A file,
because the check is one failed ``open`` per output chunk holding a metric line until the claim is there, and
the job needs nothing but the standard library to write it. Both sides of that file are in this module.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from llamamon.samples import Sample

ENV = "LLAMAMON_OUTPUT_CLAIM"

log = logging.getLogger("llamamon.record")


def claim(path: str) -> None:
    """The job's side: write the claim's time to ``path`` unless a claim is there. The first claim wins
    (``os.link`` does not replace), so a later rank cannot move the time past lines rank 0 already printed."""
    if os.path.exists(path):
        return
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "w") as fh:
            fh.write(repr(time.time()))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    except OSError as exc:
        logging.getLogger("llamamon.api").warning(
            "llamamon.claim_output: cannot tell record that the job logs through llamamon: %s", exc
        )


class OutputClaim:
    """A private folder for the claim file; ``since`` is the claim's time once the job has written it."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="llamamon-claim-"))
        self.path = self.folder / "claimed"
        self.since: float | None = None

    def check(self) -> float | None:
        """The time from which the job's printed metric lines are its own duplicates, or None (not claimed)."""
        if self.since is None:
            try:
                text = self.path.read_text()
            except OSError:
                return None
            try:
                since = float(text)
            except ValueError:
                since = math.nan  # not what claim() writes (it links a whole file): trust the claim, not the time
            self.since = since if math.isfinite(since) else -math.inf
            log.info("the job reports its metrics through llamamon: its printed metric lines are no longer parsed")
        return self.since

    def keep(self, samples: list[Sample]) -> list[Sample]:
        """``samples`` just parsed, less those parsed once the job had claimed its output."""
        since = self.check() if samples else None
        return samples if since is None else [s for s in samples if s.time is not None and s.time < since]

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
