"""Meshes from a radiance field: marching cubes on the density, vertex colours from the albedo, glTF.

Libraries: PyMCubes (marching cubes), fast-simplification (quadric decimation), trimesh (PLY/OBJ
files, mesh checks).

**Which density level is the surface.** A NeRF has no surface, only density σ; what the renders
show as the object's outline is where a pixel's opacity ``1 − exp(−∫σ ds)`` crosses 0.5 (the
threshold of the reference mask). The iso-surface ``σ = τ`` seen from a camera has exactly the
silhouette ``{rays : max σ along the ray > τ}``. :func:`silhouette_threshold` therefore renders a few
low-resolution views, counts the pixels with opacity > 0.5 and picks the τ for which the same number
of pixels have ``max σ > τ`` (a quantile of the per-ray maximum density): the mesh's silhouette then
covers the rendered silhouette's area in those views. For a hard-edged object any τ inside the edge
gives the same mesh; for a soft one (fog, a Gaussian blob) it picks the level whose outline matches
the video. A fixed level (``threshold > 0``) overrides it.

Density is sampled on a ``(R+1)³`` lattice of points over ``[−bound, bound]³`` (cell corners), only
inside the occupancy grid's occupied cells (dilated by one cell): the renderer skips the other cells,
so the mesh shows what the renders show, and the field is evaluated at a fraction of the points.
The lattice is padded with one layer of empty points, so the surface is always closed.

The ``.glb`` files are written by :mod:`animate124.render.gltf`: one mesh whose vertices move (morph
targets; :mod:`animate124.render.tracking` fits them), or a flipbook of one mesh per frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from animate124.errors import Animate124Error
from animate124.fileio import atomic_path

__all__ = [
    "MeshError",
    "Mesh",
    "density_volume",
    "silhouette_threshold",
    "marching_cubes",
    "decimate",
    "vertex_colors",
    "extract_mesh",
    "save_mesh",
    "vertex_normals",
    "mesh_stats",
    "to_trimesh",
]


class MeshError(Animate124Error):
    """Mesh extraction failed (empty field, bad threshold, unknown format)."""


@dataclass
class Mesh:
    """A triangle mesh: ``vertices [V,3]`` float32 (world units), ``faces [F,3]`` int64 (counter-clockwise
    seen from outside), ``colors [V,3]`` uint8 (albedo) or None; ``time`` of the frame (None: static)."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None
    time: float | None = None


def _time_arg(t: float | None, n: int, device: torch.device) -> Tensor | None:
    return None if t is None else torch.full((n, 1), float(t), device=device)


@torch.no_grad()
def density_volume(
    field: Any,
    resolution: int,
    *,
    t: float | None = None,
    occupancy: Any = None,
    chunk: int = 2**17,
) -> np.ndarray:
    """σ on the lattice ``linspace(−bound, bound, resolution + 1)³``, ``[R+1]*3`` float32 (axes x, y, z).

    With ``occupancy``, points outside its occupied cells (of ``t``'s slot, dilated by one cell) are 0.
    """
    bound = float(field.bound)
    dev = (
        next((p.device for p in field.parameters()), torch.device("cpu"))
        if hasattr(field, "parameters")
        else "cpu"
    )
    dev = torch.device(dev)
    n = resolution + 1
    axis = torch.linspace(-bound, bound, n, device=dev)
    gx, gy, gz = torch.meshgrid(axis, axis, axis, indexing="ij")
    pts = torch.stack([gx, gy, gz], dim=-1).reshape(-1, 3)
    keep = torch.ones(pts.shape[0], dtype=torch.bool, device=dev)
    if occupancy is not None:
        r = occupancy.resolution
        slot = 0 if t is None else int(occupancy.slot_for_time(torch.tensor(float(t))).item())
        bits = occupancy.bitfield[slot].reshape(1, 1, r, r, r).float()
        dil = torch.nn.functional.max_pool3d(bits, 3, stride=1, padding=1)[0, 0] > 0
        idx, inside = occupancy.cell_index(pts)
        keep = dil.reshape(-1)[idx.to(dil.device)].to(dev) & inside
    sigma = torch.zeros(pts.shape[0], device=dev)
    sel = keep.nonzero().squeeze(1)
    for i in range(0, sel.numel(), chunk):
        j = sel[i : i + chunk]
        sigma[j] = field.density(pts[j], _time_arg(t, j.numel(), dev)).float()
    return sigma.reshape(n, n, n).cpu().numpy()


@torch.no_grad()
def silhouette_threshold(
    field: Any,
    cameras: Any,
    *,
    times: Sequence[float] | None = None,
    occupancy: Any = None,
    max_steps: int = 1024,
    min_near: float = 0.2,
    alpha: float = 0.5,
    chunk: int = 2**17,
) -> float:
    """The density level τ whose silhouette matches the rendered one (module docstring).

    Renders every camera at every time of ``times`` (None: a static field), marching as the renderer
    does; returns the k-th largest per-ray maximum density where k = the number of pixels with
    opacity > ``alpha``. A MeshError when no pixel is opaque (nothing to mesh). ``chunk``: samples per
    field call.
    """
    from animate124.render.marcher import composite, march_rays
    from animate124.render.rays import generate_rays

    origins, dirs = generate_rays(cameras)
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    n_rays = origins.shape[0]
    maxes, opaque = [], 0
    for t in [None] if times is None else list(times):
        slots = None
        if occupancy is not None and t is not None:
            slots = occupancy.slot_for_time(torch.full((n_rays,), float(t), device=origins.device))
        pk = march_rays(
            origins,
            dirs,
            bound=float(field.bound),
            occupancy=occupancy,
            slots=slots,
            max_steps=max_steps,
            min_near=min_near,
        )
        m = torch.zeros(n_rays, device=origins.device)
        op = torch.zeros(n_rays, device=origins.device)
        if pk.num_samples:
            sigma = torch.cat(
                [
                    field.density(x, _time_arg(t, x.shape[0], origins.device)).float()
                    for x in pk.positions.split(chunk)
                ]
            )
            m = m.scatter_reduce(0, pk.ray_indices, sigma, reduce="amax", include_self=True)
            op = composite(sigma, pk.deltas, pk.ray_indices, n_rays, 0.0).opacity
        maxes.append(m)
        opaque += int((op > alpha).sum())
    if opaque == 0:
        raise MeshError(
            "the field is empty: no pixel of the silhouette renders is opaque",
            hint="check the renders (`animate124 render`), or pass a density level with --threshold",
        )
    allmax = torch.cat(maxes)
    k = min(opaque, allmax.numel())
    return float(torch.topk(allmax, k).values[-1])


def marching_cubes(volume: np.ndarray, threshold: float, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface ``σ = threshold`` of a lattice over ``[−bound, bound]³`` -> vertices [V,3], faces [F,3].

    The lattice is padded with one layer below the threshold so that the surface is closed; faces are
    wound counter-clockwise seen from outside (positive volume).
    """
    import mcubes

    if not np.isfinite(threshold) or threshold <= 0:
        raise MeshError(f"density threshold {threshold} must be a positive number")
    n = volume.shape[0]
    vol = np.pad(np.nan_to_num(volume.astype(np.float64)), 1, mode="constant", constant_values=0.0)
    verts, faces = mcubes.marching_cubes(vol, float(threshold))
    if len(faces) == 0:
        raise MeshError(
            f"no surface at density {threshold:g} (the largest density is {float(volume.max()):.4g})",
            hint="lower --threshold, or leave it at 0 (auto)",
        )
    step = 2.0 * bound / (n - 1)
    verts = ((verts - 1.0) * step - bound).astype(np.float32)
    faces = faces.astype(np.int64)
    if _signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1].copy()
    return verts, faces


def _signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    a, b, c = v[f[:, 0]].astype(np.float64), v[f[:, 1]].astype(np.float64), v[f[:, 2]].astype(np.float64)
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def decimate(
    vertices: np.ndarray, faces: np.ndarray, keep: float, max_faces: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation keeping about ``keep`` (0, 1] of the triangles (1: unchanged), and at most
    about ``max_faces`` of them (0: no limit)."""
    if keep <= 0.0:
        raise MeshError(f"decimation fraction {keep} must be in (0, 1]")
    if max_faces > 0:
        keep = min(keep, max_faces / max(len(faces), 1))
    if keep >= 1.0 or len(faces) < 64:
        return vertices, faces
    import fast_simplification

    v, f = fast_simplification.simplify(
        vertices.astype(np.float32), faces.astype(np.int64), target_reduction=1.0 - keep
    )
    return np.asarray(v, np.float32), np.asarray(f, np.int64)


@torch.no_grad()
def vertex_colors(field: Any, vertices: np.ndarray, t: float | None = None, chunk: int = 2**17) -> np.ndarray:
    """The field's albedo at the vertices -> ``[V,3]`` uint8."""
    dev = (
        next((p.device for p in field.parameters()), torch.device("cpu"))
        if hasattr(field, "parameters")
        else "cpu"
    )
    x = torch.from_numpy(np.ascontiguousarray(vertices, np.float32)).to(dev)
    out = []
    for i in range(0, x.shape[0], chunk):
        xi = x[i : i + chunk]
        out.append(field(xi, _time_arg(t, xi.shape[0], xi.device)).albedo.float().clamp(0, 1).cpu())
    alb = torch.cat(out) if out else torch.zeros(0, 3)
    return (alb.numpy() * 255.0 + 0.5).astype(np.uint8)


def extract_mesh(
    field: Any,
    threshold: float,
    *,
    resolution: int = 256,
    t: float | None = None,
    occupancy: Any = None,
    keep: float = 1.0,
    max_faces: int = 0,
) -> Mesh:
    """Marching cubes at ``threshold`` (+ optional decimation: :func:`decimate`) with albedo vertex
    colours, at time ``t``."""
    vol = density_volume(field, resolution, t=t, occupancy=occupancy)
    v, f = marching_cubes(vol, threshold, float(field.bound))
    v, f = decimate(v, f, keep, max_faces)
    return Mesh(v, f, vertex_colors(field, v, t), t)


def to_trimesh(mesh: Mesh) -> Any:
    """A ``trimesh.Trimesh`` (vertices merged, colours attached)."""
    import trimesh

    colors = None
    if mesh.colors is not None:
        colors = np.concatenate([mesh.colors, np.full((len(mesh.colors), 1), 255, np.uint8)], axis=1)
    return trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=colors, process=False)


def save_mesh(path: Path, mesh: Mesh) -> Path:
    """Write ``.ply`` (binary, vertex colours) or ``.obj`` (``v x y z r g b``) atomically."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("ply", "obj"):
        raise MeshError(f"unsupported mesh format {path.suffix!r}", hint="use .ply or .obj")
    data = to_trimesh(mesh).export(file_type=fmt)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``[V,3]`` float32 (0 for a vertex of no triangle's area)."""
    v = vertices.astype(np.float64)
    fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return (vn / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def mesh_stats(mesh: Mesh) -> dict[str, Any]:
    """Vertex/face counts and whether the mesh is closed (watertight), for the manifest."""
    tm = to_trimesh(mesh)
    tm.merge_vertices()
    return {
        "vertices": int(len(mesh.vertices)),
        "faces": int(len(mesh.faces)),
        "watertight": bool(tm.is_watertight),
    }
