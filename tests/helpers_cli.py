"""The ``animate124`` command line as tests run it in a subprocess."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def animate124_command() -> list[str]:
    """``animate124`` as installed beside this Python (the console script, as a user types it), else
    ``python -m animate124.cli.app``."""
    script = Path(sys.executable).with_name("animate124")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "animate124.cli.app"]  # pragma: no cover - not installed
