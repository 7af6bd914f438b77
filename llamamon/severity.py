"""Alert severities, least to most urgent: one tuple shared by the config, the CLI and alert events.

A module of its own so that ``llamamon --help`` (whose options list them) need not import anything heavier.
"""

from __future__ import annotations

SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
