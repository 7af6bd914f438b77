"""Whether the recorded job said that it reports its metrics through llamamon itself.

Why: the Hugging Face Trainer prints every dict it logs. With ``LlamamonCallback`` recording the same dict
through ``llamamon.log`` (exact, with its step), parsing the printed copy as well would store every value
twice, once rounded and without a step. The job cannot change ``record``'s options, so ``record`` hands it a
path (``LLAMAMON_OUTPUT_CLAIM``). ``llamamon.api.claim_output`` writes the job's clock time there before the
Trainer prints anything, and ``record`` drops what it parsed from that time on. A file, because the check is
one failed ``open`` per sampler tick and the job needs nothing but the standard library to write it.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from pathlib import Path

ENV = "LLAMAMON_OUTPUT_CLAIM"

log = logging.getLogger("llamamon.record")


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
                since = -math.inf  # not what claim_output writes (it links a whole file): trust the claim, not the time
            self.since = since if not math.isnan(since) else -math.inf
            log.info("the job reports its metrics through llamamon: its printed metric lines are no longer parsed")
        return self.since

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
