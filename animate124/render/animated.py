"""One textured mesh that follows a 4D field's motion, from the field to the ``.glb`` (``export --animated``).

:func:`fit_animated_mesh` extracts every frame's surface (marching cubes on the density at the export
resolution), takes the reference frame's surface, decimated, as *the* mesh, fits its vertices to every
frame's surface (:mod:`animate124.render.tracking`) and measures each frame's fit error.
:func:`surface_colour` bakes the field's albedo at the reference time into a UV-atlas texture
(:mod:`animate124.render.texture`) or into vertex colours, and :func:`save_mesh_glb` writes the mesh, its
colour and one morph target per frame (:mod:`animate124.render.gltf`). A static mesh is the same with
one frame. Plain arguments only (no config), so the tests drive it with analytic fields.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from animate124.render.quantize import PositionGrid, position_grid
from animate124.render.tracking import FitSettings

__all__ = ["AnimatedFit", "MeshSurface", "fit_animated_mesh", "surface_colour", "save_mesh_glb", "compact"]


@dataclass
class AnimatedFit:
    """The fitted mesh: ``positions [N,V,3]`` of ``faces [F,3]`` at ``times``; ``ref`` the reference frame;
    ``errors[k]`` = ``{"mean", "p95", "max"}`` distances to frame k's surface over ``size`` (the diagonal
    of the reference frame's bounding box). ``grid``: the integer grid the positions were snapped to
    (they are then the file's positions and the errors are theirs), or None (float positions)."""

    times: list[float]
    ref: int
    positions: np.ndarray
    faces: np.ndarray
    errors: list[dict[str, float]]
    size: float
    grid: PositionGrid | None = None

    def frames_over(self, tolerance: float) -> list[int]:
        """Frames whose largest distance passes ``tolerance`` (a fraction of the object's size)."""
        return [k for k, e in enumerate(self.errors) if e["max"] > tolerance]


@dataclass
class MeshSurface:
    """A mesh's colour: a texture (``uv [V',2]`` on the atlas's vertices, ``vmap [V']`` their original
    vertex, ``faces`` the atlas's faces, same order as the mesh's; ``texture [S,S,3]`` uint8), or
    ``colors [V,3]`` uint8 on the mesh's own vertices (then ``vmap``, ``uv``, ``texture`` are None)."""

    faces: np.ndarray
    vmap: np.ndarray | None = None
    uv: np.ndarray | None = None
    texture: np.ndarray | None = None
    colors: np.ndarray | None = None


def compact(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop vertices no face uses (decimation can leave some; glTF wants a unit normal on every vertex)."""
    used = np.unique(faces)
    if len(used) == len(vertices):
        return vertices, faces
    remap = np.full(len(vertices), -1, np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces]


@torch.no_grad()
def fit_animated_mesh(
    field: Any,
    level: float,
    times: Sequence[float],
    *,
    resolution: int = 256,
    occupancy: Any = None,
    reference_time: float = 0.0,
    keep: float = 1.0,
    max_faces: int = 0,
    settings: FitSettings = FitSettings(),
    quantize_step: float | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
) -> AnimatedFit:
    """The mesh of the frame nearest ``reference_time`` (decimated: ``keep``, ``max_faces``), fitted to the
    surface ``σ(x, t) = level`` at each of ``times`` (module docstring). ``progress(phase, done, total)``.

    ``quantize_step``: snap the fitted positions to the integer grid of the glb (at most this step,
    :func:`animate124.render.quantize.position_grid`) before the fit errors are measured, so the errors are
    those of the file's vertices; None keeps float positions."""
    from animate124.render.mesh import decimate, density_volume, marching_cubes
    from animate124.render.tracking import fit_errors, track_mesh

    times = [float(t) for t in times]
    targets = []
    for i, t in enumerate(times):
        vol = density_volume(field, resolution, t=t, occupancy=occupancy)
        targets.append(marching_cubes(vol, level, float(field.bound)))
        if progress is not None:
            progress("surfaces", i + 1, len(times))
    ref = min(range(len(times)), key=lambda k: (abs(times[k] - reference_time), k))
    rv, rf = compact(*decimate(*targets[ref], keep, max_faces))
    with torch.enable_grad():
        positions = track_mesh(
            rv,
            rf,
            targets,
            times,
            times[ref],
            settings,
            device=device,
            progress=None if progress is None else (lambda d, n: progress("fit", d, n)),
        )
    grid = None
    if quantize_step is not None:
        grid = position_grid(positions, ref, quantize_step)
        positions = grid.snap(positions)
    size = float(np.linalg.norm(positions[ref].max(axis=0) - positions[ref].min(axis=0)))
    errors = [fit_errors(positions[k], rf, targets[k], size) for k in range(len(times))]
    return AnimatedFit(times, ref, positions, rf, errors, size, grid)


@torch.no_grad()
def surface_colour(
    field: Any,
    vertices: np.ndarray,
    faces: np.ndarray,
    *,
    t: float | None = None,
    mode: str = "atlas",
    texture_size: int = 1024,
) -> MeshSurface:
    """The field's albedo at time ``t`` on the mesh: a baked atlas texture (``mode="atlas"``) or vertex
    colours (``"vertex"``)."""
    from animate124.render.mesh import vertex_colors
    from animate124.render.texture import bake_albedo, uv_atlas

    if mode == "atlas":
        vmap, fuv, uv = uv_atlas(vertices, faces, texture_size)
        tex = bake_albedo(field, vertices[vmap], fuv, uv, texture_size, t=t)
        return MeshSurface(faces=fuv, vmap=vmap, uv=uv, texture=tex)
    return MeshSurface(faces=faces, colors=vertex_colors(field, vertices, t))


def save_mesh_glb(
    path: Path,
    positions: np.ndarray,
    faces: np.ndarray,
    surface: MeshSurface,
    *,
    base: int = 0,
    times: Sequence[float] | None = None,
    fps: float = 8.0,
    interpolation: str = "LINEAR",
    name: str = "animate124",
    grid: PositionGrid | None = None,
) -> Path:
    """A ``.glb`` of one mesh at N frames (``positions [N,V,3]``; N = 1: a still mesh) with its colour;
    ``grid``: integer vertex data on that grid (``KHR_mesh_quantization``), None: floats."""
    from animate124.render.gltf import AnimatedMesh, save_animated_glb
    from animate124.render.mesh import vertex_normals
    from animate124.render.texture import png_bytes

    # normals on the welded mesh, so the atlas's cuts do not show as creases
    normals = np.stack([vertex_normals(p, faces) for p in positions])
    if surface.vmap is not None:
        positions, normals = positions[:, surface.vmap], normals[:, surface.vmap]
    anim = AnimatedMesh(
        positions=positions,
        normals=normals,
        faces=surface.faces,
        base=base,
        uv=surface.uv,
        texture_png=None if surface.texture is None else png_bytes(surface.texture),
        colors=surface.colors,
        times=times,
    )
    return save_animated_glb(path, anim, fps=fps, interpolation=interpolation, name=name, grid=grid)
