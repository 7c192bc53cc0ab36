"""Test configuration shared by every test module.

Environment variables that huggingface_hub reads at import time are set here, before anything
imports it: tests never touch the network, and model/state directories live in a temporary folder
that is removed when the session ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="animate124-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("ANIMATE124_CACHE", str(_TMP / "cache"))
os.environ["ANIMATE124_STATE_DIR"] = str(_TMP / "state")
os.environ["HF_HOME"] = str(_TMP / "hf_home")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


def pytest_sessionfinish(session, exitstatus):
    """Stop the background interpreter jobs; remove this session's temporary folder (model cache, state);
    pytest's tmp_path folders are pruned by pytest itself."""
    from helpers_triton import stop_prefetch

    stop_prefetch()
    shutil.rmtree(_TMP, ignore_errors=True)


def pytest_collection_finish(session):
    """Start the Triton-interpreter jobs of the selected modules in the background (``helpers_triton``'s
    ``prefetch_interpreted``; off with ``ANIMATE124_TEST_PREFETCH=0``): a module's jobs when at least one of its
    selected tests is neither a GPU test nor marked skip, in the order the tests will ask for them."""
    if os.environ.get("ANIMATE124_TEST_PREFETCH", "1") == "0":
        return
    from helpers_triton import prefetch_interpreted, prefetch_keys

    keys: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for item in session.items:
        path = Path(str(item.path))
        if path in seen or "gpu" in item.keywords or item.get_closest_marker("skip") is not None:
            continue
        seen.add(path)
        keys += [k for k in prefetch_keys(path.read_text()) if k not in keys]
    prefetch_interpreted(keys)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (gpu marker); none is available here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory):
    """The tiny factory models of every role in one store (built once per session, offline); modules that
    need another store define their own ``store``."""
    from animate124.models.testing import tiny_store

    return tiny_store(tmp_path_factory.getbasetemp() / "tiny_models")


@pytest.fixture(scope="session")
def without_ray(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A folder that, first on a subprocess's PYTHONPATH, makes ``import ray`` fail as it does where Ray is
    not installed (the README's set-up installs no Ray; CI installs it for the batch tests)."""
    root = tmp_path_factory.mktemp("without-ray")
    (root / "ray").mkdir()
    (root / "ray" / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'ray\' (hidden by the tests)", name="ray")\n'
    )
    return str(root)
