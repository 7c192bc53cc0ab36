"""Test helpers shared by every team's tests: a tiny model cache built once per directory."""

from __future__ import annotations

from pathlib import Path

from animate124.models.tiny import build_tiny_cache, is_tiny_cache


def tiny_cache(tmp_dir: Path, *, zero123_layout: str = "ashawkey") -> Path:
    """Build (once) the tiny cache of every role under ``tmp_dir`` and return it.

    Use it as ``ModelStore(cache_dir=tiny_cache(d), offline=True)``; a second call with the same
    directory returns at once (the marker file says it is built). Building takes about 3-4 s."""
    tmp_dir = Path(tmp_dir)
    if not is_tiny_cache(tmp_dir):
        build_tiny_cache(tmp_dir, zero123_layout=zero123_layout)
    return tmp_dir


def tiny_store(tmp_dir: Path):  # -> ModelStore (import kept local: the store imports huggingface_hub)
    """An offline :class:`ModelStore` over :func:`tiny_cache` (no overrides from the environment
    apply unless the caller's environment sets ``ANIMATE124_MODEL_*``)."""
    from animate124.models.store import ModelStore

    return ModelStore(cache_dir=tiny_cache(tmp_dir), offline=True)
