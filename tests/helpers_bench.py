"""Loading a script of ``benchmarks/`` (not a package) as a module, for the tests of the benchmarks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def load_benchmark(script: str, module: str | None = None, *, siblings: bool = False) -> ModuleType:
    """``benchmarks/<script>.py`` as the module ``module`` (default ``script``), registered in ``sys.modules``
    before it runs (its dataclasses look their module up there). ``siblings``: put ``benchmarks/`` on
    ``sys.path`` first, for a script that imports another one."""
    if siblings and str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    name = module or script
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{script}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
