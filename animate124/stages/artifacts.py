"""Trained-field artifacts: ``<project>/<stage>/model.safetensors`` (field + occupancy grid).

One safetensors file holds the field's parameters (``field/...``) and its occupancy grid's buffers
(``occupancy/...``); its metadata holds what is needed to rebuild both without the config that made
them: the field kind, the ``field`` config section and the occupancy grid's geometry. The next stage
(dynamic from static, refine from dynamic), ``render``, ``export`` and ``evaluate`` load it here.

The metadata is one key, ``animate124``, holding a JSON object with sorted keys: safetensors writes its
metadata map in hash order, which changes from process to process, so several keys would make two runs
with identical tensors write different bytes (format ``animate124-field-2``). Files of the first format
(one metadata key per entry) still load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from animate124.config.loader import to_dict
from animate124.config.schema import Config, FieldConfig
from animate124.errors import ProjectError
from animate124.fileio import atomic_path, ensure_space
from animate124.readers import read_safetensors

__all__ = ["TrainedField", "save_trained", "load_trained", "load_field", "FORMAT"]

FORMAT = "animate124-field-2"
_FORMAT_1 = "animate124-field-1"
_META_KEY = "animate124"


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
        "field": to_dict(field_cfg),
        "occupancy": occ_meta,
        "extra": extra or {},
    }
    ensure_space(Path(path), sum(v.numel() * v.element_size() for v in tensors.values()))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
    return Path(path)


def _read_meta(raw: dict[str, str], path: Path) -> dict[str, Any]:
    """The metadata of either format as one dict (``field``, ``occupancy``, ``extra`` parsed)."""
    try:
        if _META_KEY in raw:
            meta = json.loads(raw[_META_KEY])
        elif raw.get("format") == _FORMAT_1:
            meta = {k: (json.loads(v) if k in ("field", "occupancy", "extra") else v) for k, v in raw.items()}
        else:
            meta = {"format": raw.get("format")}
    except ValueError as exc:
        raise ProjectError(f"{path} is damaged (its metadata is not JSON: {exc})") from exc
    if meta.get("format") not in (FORMAT, _FORMAT_1):
        raise ProjectError(f"{path} is not an animate124 field (format {meta.get('format')!r})")
    return meta


def load_trained(
    path: Path, device: torch.device | str, backend: str | None = None, kernel_options: Any = None
) -> TrainedField:
    """Rebuild the field and occupancy grid saved by :func:`save_trained` on ``device``.

    ``backend`` overrides the saved grid backend (e.g. the machine that renders has no Triton);
    ``kernel_options`` are the grid kernels' options (``KernelOptions``; None: the defaults), which are not
    saved: the stages and output commands load through :func:`load_field`, which passes the run's.
    """
    from animate124.scene.occupancy import OccupancyGrid
    from animate124.stages.build import build_field, field_section_from_dict

    path = Path(path)
    producer = path.parent.name
    tensors, raw = read_safetensors(
        path,
        "trained field",
        hint=f"run `animate124 {producer} -p {path.parent.parent}` to make it again (the damaged file makes "
        "that stage out of date)",
        missing_hint="run the stage that makes it first",
        error=ProjectError,
    )
    meta = _read_meta(raw, path)
    fdict = dict(meta["field"])
    if backend is not None:
        fdict["backend"] = backend
    fcfg = field_section_from_dict(fdict)
    kind = meta["kind"]
    field = build_field(fcfg, kind, device, kernel_options)
    o = meta["occupancy"]
    occ = OccupancyGrid(
        resolution=o["resolution"],
        num_slots=o["num_slots"],
        bound=o["bound"],
        density_thresh=o["density_thresh"],
        decay=o["decay"],
        dynamic=o["dynamic"],
        upstream_times_bug=o["upstream_times_bug"],
    ).to(device)
    try:
        field.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("field/")}, strict=True)
        occ.load_state_dict(
            {k[10:]: v for k, v in tensors.items() if k.startswith("occupancy/")}, strict=True
        )
    except RuntimeError as exc:  # wrong or missing tensors: not what its metadata describes
        raise ProjectError(
            f"trained field {path} is damaged (its tensors do not match its metadata: "
            f"{str(exc).splitlines()[0][:200]})",
            hint=f"run `animate124 {producer} -p {path.parent.parent}` to make it again",
        ) from exc
    return TrainedField(
        field=field, occupancy=occ, kind=kind, field_cfg=fcfg, meta={"extra": meta.get("extra", {})}
    )


def load_field(
    cfg: Config, path: Path, device: torch.device | str, backend: str | None = None
) -> TrainedField:
    """:func:`load_trained` with the grid kernels' options of ``cfg`` (``stages.build.kernel_options``:
    ``run.fused_normals``): how every stage and output command loads a trained field. ``backend`` overrides the
    saved grid backend."""
    from animate124.stages.build import kernel_options

    return load_trained(path, device, backend=backend, kernel_options=kernel_options(cfg))
