"""``llamamon doctor --scrape URL``: one scrape of a serving endpoint, read against what llamamon maps.

Why a doctor section and not a record dry-run: the question before a long run is "will my dashboards
fill", which needs the engine, the llamamon metrics that resolve, the names upstream is retiring, and
the flag to pass when the server serves nothing, all from a single look at the endpoint.
"""

from __future__ import annotations

from typing import Any

from llamamon.errors import ConfigError

# Fewer mapped metrics than this and the endpoint is probably not serving its engine's metrics.
TOO_FEW = 2
NO_METRICS = "SGLang serves metrics only with --enable-metrics, llama.cpp's llama-server only with --metrics"
# What a server answers on /metrics with its metrics off: SGLang 404, llama-server 501.
OFF_STATUSES = frozenset({"HTTP 404", "HTTP 501"})


def scrape_report(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The facts about one scrape; an unreachable or failing endpoint is a ConfigError (exit 2)."""
    from llamamon.collectors import engines
    from llamamon.collectors.scrape import _trouble, fetch
    from llamamon.masking import scrub
    from llamamon.prometheus.text import ExpositionError, parse

    shown = scrub(url, ())
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"not an http(s) URL: {shown!r}", path="--scrape")
    try:
        families = parse(fetch(url, timeout))
    except (OSError, ValueError, ExpositionError) as exc:
        trouble = _trouble(exc)
        if trouble in OFF_STATUSES:
            trouble += f" ({NO_METRICS})"
        raise ConfigError(f"{shown}: {trouble}", path="--scrape") from None
    guess = engines.guess(families)
    resolved = engines.resolved(families)
    report: dict[str, Any] = {
        "url": shown,
        "families": len(families),
        "engine": guess.engine,
        "version": guess.version,
        "why": guess.why,
        "resolved": [{"metric": r.metric, "series": r.series, "how": r.how} for r in resolved],
        "deprecated": [{"series": s, "replacement": r, "since": w} for s, r, w in engines.deprecated(families)],
        "hint": None,
    }
    if len(resolved) < TOO_FEW:
        flag = engines.FLAGS.get(guess.engine)
        report["hint"] = (
            f"{guess.engine} metrics: {flag}"
            if flag
            else f"no serving metrics found; vLLM and TGI serve them by default, {NO_METRICS}"
        )
    return report


def scrape_text(report: dict[str, Any]) -> list[str]:
    """The report as doctor prints it."""
    lines = [f"Scrape {report['url']} ({report['families']} metric families)"]
    version = f" {report['version']}" if report["version"] else ""
    lines.append(f"  Engine         {report['engine']}{version} ({report['why']})")
    if report["resolved"]:
        lines.append("  Resolves")
        width = max(len(r["metric"]) for r in report["resolved"])
        lines += [f"    {r['metric']:<{width}}  <- {r['series']} ({r['how']})" for r in report["resolved"]]
    else:
        lines.append("  Resolves       no llamamon metric (the raw series are still stored)")
    for d in report["deprecated"]:
        instead = f"use {d['replacement']}" if d["replacement"] else "no replacement"
        lines.append(f"  Deprecated     {d['series']}: {d['since']}; {instead}")
    if report["hint"]:
        lines.append(f"  Hint           {report['hint']}")
    return lines
