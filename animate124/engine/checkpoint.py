"""Resumable training checkpoints: every tensor in one safetensors file, a small JSON state beside it.

Layout in a stage's ``checkpoints/`` directory::

    ckpt-0000500.safetensors   field, occupancy, optimizer moments, RNG states (all tensors)
    ckpt-0000500.json          {"step", "config_hash", "optimizer": param groups, "scaler", "python_rng", ...}

Both files are written atomically (``fileio``), the tensors first: a JSON file is only ever present
for a complete pair, so a SIGKILL at any moment leaves the previous checkpoint loadable. After a new
checkpoint is complete the older ones are deleted (the newest is kept; the stage result is a separate
file, ``<stage>/model.safetensors``). A checkpoint that does not fit on the disk is refused before
anything is written (the previous one stays).

A damaged pair (truncated, overwritten, not JSON) found when resuming is set aside: both files are
renamed to ``*.corrupt`` with a warning, and the stage resumes from an older complete pair if there is
one, else starts over. It never blocks the stage, and nothing is deleted that a person might want to
look at.

Optimizer state is flattened to ``optim/<param index>/<key>`` tensors plus the JSON param groups, so
``torch.optim.Optimizer.load_state_dict`` restores it exactly (including Adam's ``step`` counters).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from animate124.errors import DamagedFileError, ProjectError
from animate124.fileio import atomic_path, atomic_write_json, ensure_space
from animate124.readers import read_json, read_safetensors

log = logging.getLogger(__name__)

__all__ = [
    "Checkpoint",
    "save_checkpoint",
    "load_latest_checkpoint",
    "optimizer_to_flat",
    "optimizer_from_flat",
    "rng_state",
    "set_rng_state",
]

_NAME = re.compile(r"ckpt-(\d{7})\.json$")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the completed step, all tensors (on the CPU) and the JSON state."""

    step: int
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``opt.state_dict()`` -> (tensors ``optim/<idx>/<key>``, JSON-able param groups + scalar state)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim/{idx}/{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(
    opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """Inverse of :func:`optimizer_to_flat`: load the state into ``opt`` (moments go to the params' devices)."""
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if not name.startswith("optim/"):
            continue
        _, idx, key = name.split("/", 2)
        state.setdefault(int(idx), {})[key] = val
    for idx, sc in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state(generators: Mapping[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """States of the named generators, torch's global CPU (and CUDA) RNG, Python's and NumPy's."""
    tensors = {f"rng/{name}": g.get_state().cpu() for name, g in generators.items()}
    tensors["rng/_torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng/_torch_cuda"] = torch.cuda.get_rng_state()
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def set_rng_state(
    generators: Mapping[str, torch.Generator], tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """Restore what :func:`rng_state` saved; a generator missing from the checkpoint is an error."""
    for name, g in generators.items():
        key = f"rng/{name}"
        if key not in tensors:
            raise ProjectError(
                f"the checkpoint has no state for random generator {name!r} (written by an older version?)",
                hint="rerun the stage with --force to start it over",
            )
        g.set_state(tensors[key].to(torch.uint8))
    torch.set_rng_state(tensors["rng/_torch_cpu"].to(torch.uint8))
    if "rng/_torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/_torch_cuda"].to(torch.uint8))
    if "python" in meta:
        v, st, gauss = meta["python"]
        random.setstate((v, tuple(st), gauss))
    if "numpy" in meta:
        name, keys, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _paths(directory: Path, step: int) -> tuple[Path, Path]:
    stem = f"ckpt-{step:07d}"
    return directory / f"{stem}.safetensors", directory / f"{stem}.json"


def save_checkpoint(
    directory: Path, step: int, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any]
) -> Path:
    """Write checkpoint ``step`` (tensors first, then the JSON) and delete older checkpoints."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    st_path, js_path = _paths(directory, step)
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    ensure_space(st_path, sum(v.numel() * v.element_size() for v in clean.values()) + (1 << 20))
    with atomic_path(st_path) as tmp:
        save_file(clean, str(tmp))
    atomic_write_json(js_path, {"step": step, **state})
    for old in directory.glob("ckpt-*.json"):
        m = _NAME.search(old.name)
        if m and int(m.group(1)) != step:
            old.unlink(missing_ok=True)
            old.with_suffix(".safetensors").unlink(missing_ok=True)
    for stray in directory.glob("ckpt-*.safetensors"):  # tensors whose JSON never got written
        if not stray.with_suffix(".json").exists():
            stray.unlink(missing_ok=True)
    log.debug("checkpoint at step %d in %s", step, directory)
    return js_path


def _set_aside(paths: tuple[Path, ...]) -> list[str]:
    """Rename the files of a damaged checkpoint to ``<name>.corrupt``; returns the new names."""
    moved = []
    for p in paths:
        if p.exists():
            target = p.with_name(p.name + ".corrupt")
            p.replace(target)
            moved.append(target.name)
    return moved


def load_latest_checkpoint(directory: Path) -> Checkpoint | None:
    """The newest complete checkpoint in ``directory`` (None when there is none); damaged ones are set
    aside as ``*.corrupt`` with a warning (module docstring)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in directory.glob("ckpt-*.json") if (m := _NAME.search(p.name)))
    for i, (step, js) in enumerate(reversed(found)):
        st = js.with_suffix(".safetensors")
        if not st.is_file():
            continue
        try:
            state = read_json(js, "checkpoint")
            if not isinstance(state, dict) or not isinstance(state.get("optimizer"), dict):
                raise DamagedFileError(f"checkpoint {js} is damaged (not a checkpoint state)", path=str(js))
            tensors, _ = read_safetensors(st, "checkpoint")
        except DamagedFileError as exc:
            moved = _set_aside((js, st))
            older = len(found) - 1 - i
            then = "resuming from the previous checkpoint" if older else "the stage starts over"
            log.warning("%s; set aside as %s: %s", exc.message, " and ".join(moved), then)
            continue
        return Checkpoint(step=step, tensors=tensors, state=state)
    return None
