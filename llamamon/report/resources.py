"""Where the shipped report templates live, in a wheel and in a checkout."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def templates_dir() -> Path:
    """The packaged ``llamamon/templates`` of a wheel install, else the checkout's top-level ``templates/``.

    An editable install keeps ``import llamamon`` pointing at the checkout while hatchling copies the
    templates elsewhere, so the packaged path is tried first and the checkout path second.
    """
    packaged = Path(str(importlib.resources.files("llamamon") / "templates"))
    if (packaged / "report.html.j2").is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "templates"
