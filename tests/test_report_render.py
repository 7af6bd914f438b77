"""report.render and the templates: escaping, self-containment, overrides, Markdown, empty dashboards."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from report_store import save_run, write_rows

from llamamon.errors import ConfigError
from llamamon.report.data import AlertSpan
from llamamon.report.render import environment, render_report
from llamamon.report.resources import templates_dir
from llamamon.samples import Row, RunInfo, make_labels

T0 = 1_790_000_000.0
EVIL = "<script>alert(\"x\")</script> & 'q'"
RUN = "20260923T000000Z-host-0001"


def hostile_store(metrics_dir: Path) -> RunInfo:
    """A small run whose every user-controlled string tries to become markup."""
    info = RunInfo(
        id=RUN,
        host="host<i>",
        start=T0,
        end=T0 + 600,
        exit_code=1,
        name=EVIL,
        tags={"owner": EVIL, "<b>key</b>": "v&v"},
        command=["python", "-c", EVIL],
        git_commit='abc"def',
        cpu_model="<img src=x onerror=alert(1)>",
    )
    save_run(metrics_dir, info)
    rows = []
    for i in range(120):
        t = T0 + i * 5
        rows += [
            Row(t, "system", "cpu_usage", 0.3 + 0.001 * i),
            Row(t, "system", "memory_usage", 0.5 + 0.003 * i),
            Row(t, "gpu", "gpu_utilization", 0.8, make_labels(gpu=EVIL)),
            Row(t, "training", "loss", 3.0 - 0.01 * i, step=i + 1),
            Row(t, "custom", EVIL, float(i), make_labels(note=EVIL)),
        ]
    write_rows(metrics_dir, rows, run=RUN)
    return info


ALERTS = [AlertSpan("loss_plateau", "warning", make_labels(metric="loss", who=EVIL), T0 + 100, T0 + 200, RUN, EVIL)]


@pytest.fixture(scope="module")
def hostile_html(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("hostile")
    metrics_dir = root / ".metrics"
    info = hostile_store(metrics_dir)
    out = render_report(metrics_dir, [info], root / "r.html", alerts=ALERTS)
    return out.read_text(encoding="utf-8")


def test_user_strings_are_escaped_everywhere(hostile_html):
    assert "<script" not in hostile_html
    assert "<img src=x" not in hostile_html
    assert "<b>key</b>" not in hostile_html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#39;q&#39;" in hostile_html
    assert "abc&#34;def" in hostile_html


def test_page_is_self_contained_under_a_strict_csp(hostile_html):
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)"', hostile_html)
    assert csp is not None
    policy = csp.group(1)
    assert "default-src 'none'" in policy
    assert "img-src data:" in policy
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', hostile_html)
    assert refs, "the report has images"
    assert all(r.startswith(("data:", "#")) for r in refs), [r[:40] for r in refs if not r.startswith("data:")]
    assert not re.search(r"https?://", hostile_html.replace("http://www.w3.org/", ""))
    assert "@import" not in hostile_html
    assert "url(" not in hostile_html


def test_sections_header_and_alerts_render(hostile_html):
    for section in ('id="overview"', 'id="alerts"', 'id="system"', 'id="training"', 'id="inference"'):
        assert section in hostile_html
    assert "failed (exit 1)" in hostile_html
    assert "No inference metrics recorded" in hostile_html  # one line instead of empty axes
    assert "loss_plateau" in hostile_html
    assert "1 firing span" in hostile_html


def test_every_shipped_template_renders_with_a_minimal_context(tmp_path, metrics_dir):
    info = RunInfo(id=RUN, host="h", start=T0)
    save_run(metrics_dir, info)
    for fmt in ("html", "markdown"):
        out = render_report(metrics_dir, [info], tmp_path / f"r.{fmt}", fmt=fmt)
        text = out.read_text()
        assert "No system metrics recorded" in text
    names = {p.relative_to(templates_dir()).as_posix() for p in templates_dir().rglob("*.j2")}
    env = environment()
    for name in names:
        env.get_template(name)  # every shipped template at least parses
    assert {"report.html.j2", "report.md.j2"} <= names


def test_template_dir_overrides_one_file_and_strict_undefined_fails(tmp_path, metrics_dir):
    info = RunInfo(id=RUN, host="h", start=T0)
    save_run(metrics_dir, info)
    custom = tmp_path / "tpl"
    (custom / "partials").mkdir(parents=True)
    (custom / "partials" / "overview.html.j2").write_text("<p>MY OVERVIEW {{ runs[0].id }}</p>")
    out = render_report(metrics_dir, [info], tmp_path / "r.html", template_dir=custom).read_text()
    assert f"MY OVERVIEW {RUN}" in out
    assert 'id="system"' in out  # the rest still comes from the shipped templates
    (custom / "partials" / "overview.html.j2").write_text("{{ no_such_value }}")
    with pytest.raises(ConfigError, match="no_such_value"):
        render_report(metrics_dir, [info], tmp_path / "r2.html", template_dir=custom)


def test_markdown_summary_names_its_charts_but_links_no_image_a_step_summary_cannot_show(tmp_path):
    # A CI step summary shows neither a PNG linked by relative path nor a data: image: none is written or linked.
    metrics_dir = tmp_path / ".metrics"
    info = hostile_store(metrics_dir)
    out = render_report(metrics_dir, [info], tmp_path / "summary.md", fmt="markdown", selected=["system", "training"])
    text = out.read_text()
    assert "**failed (exit 1)**" in text
    assert not re.search(r"\]\([^)]*\.png\)|data:image|!\[", text)
    assert not (tmp_path / "summary-charts").exists()
    assert "Charts are in the HTML report" in text
    assert "- **Training**: Loss by step" in text  # the charts are named
    assert "<script" not in text
    assert "Inference" not in text  # not selected


def test_markdown_is_not_html_escaped(tmp_path):
    # The hostile run's name and command hold quotes, < > and &; Markdown shows them as written.
    metrics_dir = tmp_path / ".metrics"
    info = hostile_store(metrics_dir)
    text = render_report(metrics_dir, [info], tmp_path / "s.md", fmt="markdown").read_text()
    assert not re.search(r"&(#\d+|#x[0-9a-f]+|amp|quot|apos);", text), re.findall(r".{20}&#?\w+;.{10}", text)
    assert "&lt;script&gt;alert(\"x\")&lt;/script&gt; \\& 'q'" in text  # the run's name, a cell
    assert "<script" not in text
    empty = RunInfo(id="20260923T010000Z-host-0002", host="h", start=T0)
    save_run(metrics_dir, empty)
    hints = render_report(metrics_dir, [empty], tmp_path / "e.md", fmt="markdown").read_text()
    assert "print HF-style `{'loss': ...}` lines" in hints  # the training dashboard's hint, quotes intact


def test_unknown_dashboard_is_a_config_error(tmp_path, metrics_dir):
    info = RunInfo(id=RUN, host="h", start=T0)
    with pytest.raises(ConfigError, match="unknown dashboard 'gpus'"):
        render_report(metrics_dir, [info], tmp_path / "r.html", selected=["gpus"])
