"""``import llamamon``, ``llamamon.log()`` and ``llamamon --help`` must not pull in heavy libraries.

Each check runs in a fresh interpreter and lists what got imported; wall time belongs to bench/.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import llamamon_env

HEAVY = ("polars", "pyarrow", "matplotlib", "jinja2", "aiosmtplib")


def imported_after(code: str, cwd) -> set[str]:
    probe = code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, env=llamamon_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_import_llamamon_is_light(tmp_path):
    found = top_level(imported_after("import llamamon", tmp_path)) & {*HEAVY, "psutil", "yaml", "pynvml"}
    assert not found, f"lazy-loading regression: found {sorted(found)} at `import llamamon`"


def test_log_imports_no_polars_pyarrow_psutil_matplotlib(tmp_path):
    found = top_level(
        imported_after("import llamamon; llamamon.log(loss=1.0); llamamon.log({'lr': 1e-3}, step=2)", tmp_path)
    )
    bad = found & {*HEAVY, "psutil", "pynvml"}
    assert not bad, f"llamamon.log() imported {sorted(bad)}"
    assert (tmp_path / ".metrics" / "_journal").is_dir()  # it really wrote something


@pytest.mark.parametrize("name", ["TrainingMonitor", "InferenceMonitor", "MetricsCollector"])
def test_public_classes_load_without_heavy_libraries(tmp_path, name):
    found = top_level(imported_after(f"import llamamon; llamamon.{name}", tmp_path)) & {*HEAVY}
    assert not found, f"llamamon.{name} imported {sorted(found)}"


def test_cli_help_is_light(tmp_path):
    # main(argv) returns through SystemExit (main() alone would end the process before the modules are listed)
    code = "from llamamon.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    found = top_level(imported_after(code, tmp_path)) & set(HEAVY)
    assert not found, f"`llamamon --help` imported {sorted(found)}"


def test_public_api_is_exactly_all():
    import llamamon

    assert sorted(llamamon.__all__) == sorted(
        ["log", "init", "TrainingMonitor", "InferenceMonitor", "MetricsCollector", "__version__"]
    )
    for name in llamamon.__all__:
        assert getattr(llamamon, name) is not None
    with pytest.raises(AttributeError):
        llamamon.not_a_name  # noqa: B018
