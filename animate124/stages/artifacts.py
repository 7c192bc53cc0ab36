"""Trained-field artifacts: ``<project>/<stage>/model.safetensors`` (field + occupancy grid).

One safetensors file holds the field's parameters (``field/...``) and its occupancy grid's buffers
(``occupancy/...``); its metadata holds what is needed to rebuild both without the config that made
them: the field kind, the ``field`` config section and the occupancy grid's geometry. The next stage
(dynamic from static, refine from dynamic), ``render``, ``export`` and ``evaluate`` load it here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from animate124.config.loader import to_dict
from animate124.config.schema import FieldConfig
from animate124.errors import ProjectError
from animate124.fileio import atomic_path

__all__ = ["TrainedField", "save_trained", "load_trained", "FORMAT"]

FORMAT = "animate124-field-1"


@dataclass
class TrainedField:
    """A loaded field: ``kind`` is "static" or "dynamic"; ``field_cfg`` the section it was built with."""

    field: Any
    occupancy: Any
    kind: str
    field_cfg: FieldConfig
    meta: dict[str, Any]


def save_trained(
    path: Path, field: Any, occupancy: Any, *, kind: str, field_cfg: FieldConfig, extra: dict | None = None
) -> Path:
    """Write the field and its occupancy grid atomically (tensors on the CPU, fp32)."""
    from safetensors.torch import save_file

    tensors = {f"field/{k}": v.detach().float().cpu().contiguous() for k, v in field.state_dict().items()}
    for k, v in occupancy.state_dict().items():
        tensors[f"occupancy/{k}"] = v.detach().cpu().contiguous()
    occ_meta = {
        "resolution": occupancy.resolution,
        "num_slots": occupancy.num_slots,
        "bound": occupancy.bound,
        "density_thresh": occupancy.density_thresh,
        "decay": occupancy.decay,
        "dynamic": occupancy.dynamic,
        "upstream_times_bug": occupancy.upstream_times_bug,
    }
    meta = {
        "format": FORMAT,
        "kind": kind,
        "field": json.dumps(to_dict(field_cfg)),
        "occupancy": json.dumps(occ_meta),
        "extra": json.dumps(extra or {}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def load_trained(path: Path, device: torch.device | str, backend: str | None = None) -> TrainedField:
    """Rebuild the field and occupancy grid saved by :func:`save_trained` on ``device``.

    ``backend`` overrides the saved grid backend (e.g. the machine that renders has no Triton).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from animate124.scene.occupancy import OccupancyGrid
    from animate124.stages.build import build_field, field_section_from_dict

    path = Path(path)
    if not path.is_file():
        raise ProjectError(f"trained field {path} does not exist", hint="run the stage that makes it first")
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    if meta.get("format") != FORMAT:
        raise ProjectError(f"{path} is not an animate124 field (format {meta.get('format')!r})")
    fdict = json.loads(meta["field"])
    if backend is not None:
        fdict["backend"] = backend
    fcfg = field_section_from_dict(fdict)
    kind = meta["kind"]
    field = build_field(fcfg, kind, device)
    tensors = load_file(str(path))
    field.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("field/")}, strict=True)
    o = json.loads(meta["occupancy"])
    occ = OccupancyGrid(
        resolution=o["resolution"],
        num_slots=o["num_slots"],
        bound=o["bound"],
        density_thresh=o["density_thresh"],
        decay=o["decay"],
        dynamic=o["dynamic"],
        upstream_times_bug=o["upstream_times_bug"],
    ).to(device)
    occ.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("occupancy/")}, strict=True)
    return TrainedField(
        field=field,
        occupancy=occ,
        kind=kind,
        field_cfg=fcfg,
        meta={"extra": json.loads(meta.get("extra", "{}"))},
    )
