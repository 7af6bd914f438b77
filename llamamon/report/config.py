"""What the report takes from monitoring.yaml: the metrics folder, the thresholds drawn as lines, alerts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamamon.report.data import AlertSpan, Thresholds, thresholds_from_config
from llamamon.samples import RunInfo


@dataclass(slots=True)
class ReportSettings:
    metrics_dir: Path
    thresholds: Thresholds
    config: Any = None

    def alerts(self, runs: Sequence[RunInfo]) -> list[AlertSpan]:
        """Alert spans of these runs: the rules engine replayed over their samples."""
        from llamamon.report.alerts import replay_alerts

        if self.config is None:
            return []
        return replay_alerts(self.config, self.metrics_dir, runs)


def report_settings(config_path: str | None, metrics_dir: str | None) -> ReportSettings:
    """--config (or $LLAMAMON_CONFIG, ./monitoring.yaml, built-in defaults) and --metrics-dir, resolved once."""
    from llamamon.config import load_config

    cfg = load_config(config_path)
    chosen = metrics_dir or os.environ.get("LLAMAMON_METRICS_DIR") or cfg.monitoring.metrics_path
    return ReportSettings(Path(chosen), thresholds_from_config(cfg), cfg)
