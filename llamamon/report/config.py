"""What the report takes from monitoring.yaml: the metrics folder, the thresholds drawn as lines, alerts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamamon.report.data import AlertReplay, Thresholds, thresholds_from_config


@dataclass(slots=True)
class ReportSettings:
    metrics_dir: Path | str  # a folder, or a bucket URL the command opens (store.location)
    thresholds: Thresholds
    config: Any = None

    def alerts(self) -> AlertReplay | None:
        """The rules engine replay that gives the alert spans, run over the samples the report reads."""
        from llamamon.report.alerts import alert_replay

        return None if self.config is None else alert_replay(self.config)


def report_settings(config_path: str | None, metrics_dir: str | None) -> ReportSettings:
    """--config (or $LLAMAMON_CONFIG, ./monitoring.yaml, built-in defaults) and --metrics-dir, resolved once."""
    from llamamon.config import load_config
    from llamamon.config.schema import metrics_path_of

    cfg = load_config(config_path)
    chosen = metrics_dir or os.environ.get("LLAMAMON_METRICS_DIR") or cfg.monitoring.metrics_path
    return ReportSettings(
        chosen if isinstance(chosen, Path) else metrics_path_of(chosen), thresholds_from_config(cfg), cfg
    )
