"""One mesh carried through time: its vertices fitted to every frame's surface (``export --animated``).

An animated export is one triangle mesh, the *reference mesh* (marching cubes at the reference time,
decimated), whose vertices move; glTF stores each frame's positions as a morph target. The vertices of
frame k are fitted to frame k's surface: the density level set ``σ(x, t_k) = τ``, represented by its
marching-cubes mesh on the export lattice (the surface a per-frame export writes; the fast grid
encoders give no gradient with respect to x, so the field itself is not differentiated). Frames are
visited outward from the reference time, each starting from its neighbour's fitted positions:

1. **Rigid step, per connected part**: each part starts where a constant velocity puts it (the rigid
   motion between the two frames before, again), then a few rounds of ICP move it onto the surface by a
   rotation, a translation and a uniform scale: point-to-plane (Chen & Medioni 1992, linearised, one
   Gauss-Newton step a round) with a small point-to-point term, over symmetric correspondences (each
   vertex to its nearest surface point, each surface point to its nearest vertex of the part). It takes
   up the bulk of a part's motion, so the non-rigid step only follows the change of shape, and vertices
   do not slide along the surface.
2. **Non-rigid step** (non-rigid ICP, as Amberg et al. 2007, solved with Adam): offsets ``D [V,3]``,
   positions ``X = X₀ + D`` (``X₀`` after the rigid step), minimising, with distances in units of ``h``
   (the reference mesh's mean edge length)::

       E = mean_i (n_j·(x_i − p_j))² + α·mean_i ‖x_i − p_j‖²   to the surface: point-to-plane, j = j(i)
         + β·mean_q ‖x_i(q) − q‖²                              the surface is covered: i = i(q)
         + λ_s·mean_i ‖(L D)_i‖²                               smooth motion: Laplacian of the offsets
         + λ_e·mean_e ((‖x_a − x_b‖ − ℓ_e) / ℓ_e)²             as rigid as possible: edge lengths kept

   ``p_j, n_j``: the nearest target vertex and its normal; ``q``: target vertices (a sample);
   ``L``: the uniform graph Laplacian; ``ℓ_e``: the edge lengths of the frame the fit starts from
   (lengths of the reference mesh would forbid a part that stretches over the motion).
   Correspondences are recomputed every few Adam steps (KD-trees, scipy); the learning rate decays to
   1 % by a cosine. The weights (``FitSettings``) were chosen on analytic scenes (a ball rising, a box
   turning, an ellipsoid stretching by 1.7× and bending, a ball growing by 2.2× in three frames, two
   balls separating): the point-to-point weights are small because they pull vertices towards the
   surface's discrete vertices, i.e. along the surface (the texture would slide); the edge term is
   weak because it resists a part that stretches; the Laplacian keeps the motion smooth. The
   stretching ellipsoid is followed to within 1 % of its size at the 95th percentile.

The fit error of a frame is measured independently of the loss, by exact point-to-triangle distances
(:func:`surface_distances`) both ways between the fitted mesh and the frame's marching-cubes surface,
relative to the object's size (the diagonal of the reference mesh's bounding box). Where one topology
cannot follow the motion (parts that split, merge or appear) the error grows at those frames.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from animate124.render.mesh import vertex_normals

__all__ = [
    "FitSettings",
    "track_mesh",
    "surface_distances",
    "fit_errors",
    "visit_order",
]


@dataclass(frozen=True)
class FitSettings:
    """Weights and step counts of :func:`track_mesh` (module docstring): ``iters`` Adam steps per frame,
    correspondences every ``refresh`` steps, ``lr`` in units of h, ``rigid_rounds`` ICP rounds per part."""

    iters: int = 100
    refresh: int = 5
    lr: float = 0.1
    rigid_rounds: int = 8
    alpha: float = 0.02
    beta: float = 0.05
    smooth: float = 4.0
    edge: float = 0.2
    reverse_samples: int = 4


def visit_order(times: Sequence[float], reference_time: float) -> list[tuple[int, int | None]]:
    """(frame, frame it starts from or None for the reference mesh) in the order the frames are fitted:
    outward from the frame nearest ``reference_time``, forward in time, then backward."""
    order = sorted(range(len(times)), key=lambda i: times[i])
    first = min(order, key=lambda i: (abs(times[i] - reference_time), times[i]))
    k = order.index(first)
    steps: list[tuple[int, int | None]] = [(first, None)]
    steps += [(order[i], order[i - 1]) for i in range(k + 1, len(order))]
    steps += [(order[i], order[i + 1]) for i in range(k - 1, -1, -1)]
    return steps


def _edges(faces: np.ndarray) -> np.ndarray:
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e.sort(axis=1)
    return np.unique(e, axis=0)


def _laplacian(n: int, edges: np.ndarray, device: torch.device) -> Tensor:
    """Uniform graph Laplacian ``(L D)_i = D_i − mean_{j ∈ N(i)} D_j`` as a sparse [V,V] matrix."""
    a = np.concatenate([edges[:, 0], edges[:, 1]])
    b = np.concatenate([edges[:, 1], edges[:, 0]])
    deg = np.bincount(a, minlength=n).astype(np.float32)
    w = -1.0 / np.maximum(deg[a], 1.0)
    rows = np.concatenate([np.arange(n), a])
    cols = np.concatenate([np.arange(n), b])
    vals = np.concatenate([np.ones(n, np.float32), w.astype(np.float32)])
    idx = torch.from_numpy(np.stack([rows, cols])).long()
    lap = torch.sparse_coo_tensor(idx, torch.from_numpy(vals), (n, n), check_invariants=False)
    return lap.coalesce().to(device)


def _components(n: int, edges: np.ndarray) -> list[np.ndarray]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    k, labels = connected_components(g, directed=False)
    return [np.flatnonzero(labels == c) for c in range(k)]


def _kabsch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t minimising ``Σ ‖R·src + t − dst‖²`` (no reflection)."""
    cs, cd = src.mean(axis=0), dst.mean(axis=0)
    u, _, vt = np.linalg.svd((src - cs).T @ (dst - cd))
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, cd - r @ cs


def _predict(before: np.ndarray, last: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """Each part of ``last`` moved once more by the rigid motion that took it from ``before`` to ``last``
    (constant velocity: the start of the next frame's fit; a scale change is left to the ICP)."""
    out = last.astype(np.float64).copy()
    for idx in parts:
        if len(idx) >= 4:
            r, t = _kabsch(before[idx].astype(np.float64), last[idx].astype(np.float64))
            out[idx] = out[idx] @ r.T + t
    return out


def _skew_rotation(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of the rotation vector ``w`` (Rodrigues)."""
    a = float(np.linalg.norm(w))
    if a < 1e-12:
        return np.eye(3)
    k = w / a
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(a) * kx + (1.0 - np.cos(a)) * (kx @ kx)


def _rigid_update(src: np.ndarray, dst: np.ndarray, nrm: np.ndarray, point_weight: float) -> np.ndarray:
    """One Gauss-Newton step of point-to-plane ICP (Chen & Medioni 1992) with a small point-to-point term,
    for a similarity (rotation ω, uniform scale s, translation t about the centroid c of ``src``):

        p' = e^s·R(ω)·(p − c) + c + t,  min Σ (n·(p' − q))² + w·Σ ‖p' − q‖²   (linearised in ω, s, t)

    -> ``src`` moved by it. The scale lets a part that grows or shrinks be taken up here too."""
    c = src.mean(axis=0)
    p, r = src - c, dst - src
    jac = np.zeros((len(p), 3, 7))  # d p' / d(ω, s, t) at 0
    jac[:, 0, 1], jac[:, 0, 2] = p[:, 2], -p[:, 1]
    jac[:, 1, 0], jac[:, 1, 2] = -p[:, 2], p[:, 0]
    jac[:, 2, 0], jac[:, 2, 1] = p[:, 1], -p[:, 0]
    jac[:, :, 3] = p
    jac[:, :, 4:] = np.eye(3)
    a = np.einsum("mi,mij->mj", nrm, jac)
    h = a.T @ a + point_weight * np.einsum("mij,mik->jk", jac, jac)
    g = a.T @ (r * nrm).sum(axis=1) + point_weight * np.einsum("mij,mi->j", jac, r)
    x = np.linalg.solve(h + 1e-9 * len(p) * np.eye(7), g)
    return np.exp(x[3]) * (p @ _skew_rotation(x[:3]).T) + c + x[4:]


def _rigid_step(
    x: np.ndarray,
    parts: list[np.ndarray],
    target: np.ndarray,
    target_normals: np.ndarray,
    target_tree: object,
    rounds: int,
    point_weight: float = 0.1,
) -> np.ndarray:
    """Per-part symmetric ICP (module docstring, step 1); parts of fewer than 4 vertices stay put."""
    from scipy.spatial import cKDTree

    x = x.astype(np.float64).copy()
    owner = np.full(len(x), -1)
    for c, idx in enumerate(parts):
        owner[idx] = c
    for _ in range(rounds):
        _, fwd = target_tree.query(x, workers=-1)
        _, rev = cKDTree(x).query(target, workers=-1)
        rev_owner = owner[rev]
        for c, idx in enumerate(parts):
            if len(idx) < 4:
                continue
            q = np.flatnonzero(rev_owner == c)
            src_idx = np.concatenate([idx, rev[q]])
            dst_idx = np.concatenate([fwd[idx], q])
            moved = _rigid_update(x[src_idx], target[dst_idx], target_normals[dst_idx], point_weight)
            # the part's vertices move as the first len(idx) rows of src did
            x[idx] = moved[: len(idx)]
    return x


#: Below this many vertices a CPU fit runs with one intra-op thread (see :func:`_small_tensor_threads`).
ONE_THREAD_VERTICES = 50_000


@contextlib.contextmanager
def _small_tensor_threads(device: torch.device, n: int) -> Iterator[None]:
    """One torch thread while fitting ``n`` < ONE_THREAD_VERTICES vertices on the CPU, restored after.

    Each Adam step is a few dozen operations on tensors of n×3 numbers; splitting those over threads
    costs more than it saves, and on a busy machine much more (2 cores shared with other work, 1440
    vertices: 100 ms a step with 2 threads, 7 ms with one)."""
    if device.type != "cpu" or n >= ONE_THREAD_VERTICES:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def track_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    targets: Sequence[tuple[np.ndarray, np.ndarray]],
    times: Sequence[float],
    reference_time: float,
    settings: FitSettings = FitSettings(),
    *,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Positions ``[N,V,3]`` float32 of the reference mesh ``(vertices [V,3], faces [F,3])`` at each of the
    N frames, in the order of ``times`` (module docstring).

    ``targets[k] = (vertices, faces)``: frame k's marching-cubes surface at ``times[k]``; the frame nearest
    ``reference_time`` starts from ``vertices``. ``progress(done, total)`` after each frame.
    """
    from scipy.spatial import cKDTree

    if len(targets) != len(times):
        raise ValueError("one target surface per time")
    dev = torch.device(device)
    n = len(vertices)
    edges = _edges(faces)
    lap = _laplacian(n, edges, dev)
    parts = _components(n, edges)
    e_idx = torch.from_numpy(edges).long().to(dev)
    h = (
        float(np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1).mean())
        if len(edges)
        else 1.0
    )
    out = np.zeros((len(times), n, 3), np.float32)
    came_from: dict[int, int | None] = {}
    with _small_tensor_threads(dev, n):
        for done, (k, start) in enumerate(visit_order(times, reference_time), start=1):
            came_from[k] = start
            x_prev = vertices if start is None else out[start]
            guess = x_prev
            if start is not None and came_from.get(start) is not None:
                guess = _predict(out[came_from[start]], x_prev, parts)
            tv, tf = targets[k]
            tree = cKDTree(tv)
            tn = vertex_normals(tv, tf)
            x0 = _rigid_step(guess, parts, tv, tn, tree, settings.rigid_rounds)
            xp = torch.from_numpy(np.ascontiguousarray(x_prev, np.float32)).to(dev)
            rest = (xp[e_idx[:, 0]] - xp[e_idx[:, 1]]).norm(dim=1).clamp_min(1e-12)
            out[k] = _nonrigid_step(x0, tv, tn, tree, lap, e_idx, rest, h, settings, dev)
            if progress is not None:
                progress(done, len(times))
    return out


def _nonrigid_step(
    x0: np.ndarray,
    tv: np.ndarray,
    tn: np.ndarray,
    tree: object,
    lap: Tensor,
    e_idx: Tensor,
    rest: Tensor,
    h: float,
    s: FitSettings,
    dev: torch.device,
) -> np.ndarray:
    """Adam on the offsets (module docstring, step 2) -> fitted positions ``[V,3]`` float32."""
    from scipy.spatial import cKDTree

    if s.iters <= 0:
        return x0.astype(np.float32)
    base = torch.from_numpy(x0.astype(np.float32)).to(dev)
    offs = torch.zeros_like(base, requires_grad=True)
    opt = torch.optim.Adam([offs], lr=s.lr * h)
    t_pts = torch.from_numpy(tv.astype(np.float32)).to(dev)
    t_nrm = torch.from_numpy(tn.astype(np.float32)).to(dev)
    rng = np.random.default_rng(0)
    m = min(len(tv), s.reverse_samples * len(x0))
    inv_h2 = 1.0 / (h * h)
    fwd = rev = q = None
    for it in range(s.iters):
        if it % max(1, s.refresh) == 0:
            xs = (base + offs).detach().cpu().numpy()
            fwd = torch.from_numpy(tree.query(xs, workers=-1)[1]).long().to(dev)
            qi = rng.choice(len(tv), m, replace=False) if m < len(tv) else np.arange(len(tv))
            rev = torch.from_numpy(cKDTree(xs).query(tv[qi], workers=-1)[1]).long().to(dev)
            q = t_pts[torch.from_numpy(qi).long().to(dev)]
        for g in opt.param_groups:
            g["lr"] = s.lr * h * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * it / s.iters)))
        x = base + offs
        d = x - t_pts[fwd]
        plane = (d * t_nrm[fwd]).sum(dim=1)
        loss = inv_h2 * ((plane**2).mean() + s.alpha * (d**2).sum(dim=1).mean())
        loss = loss + s.beta * inv_h2 * ((x[rev] - q) ** 2).sum(dim=1).mean()
        if s.smooth > 0:
            loss = loss + s.smooth * inv_h2 * (torch.sparse.mm(lap, offs) ** 2).sum(dim=1).mean()
        if s.edge > 0 and len(rest):
            length = (x[e_idx[:, 0]] - x[e_idx[:, 1]]).norm(dim=1)
            loss = loss + s.edge * (((length - rest) / rest) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (base + offs).detach().cpu().numpy().astype(np.float32)


def surface_distances(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, candidates: int = 16
) -> np.ndarray:
    """Distance of each point ``[P,3]`` to the triangle mesh ``(vertices, faces)``, ``[P]`` float64.

    Exact point-to-triangle distances (``trimesh.triangles.closest_point``) to the ``candidates`` faces
    whose centroids are nearest: exact whenever the closest face is among them, which holds for meshes
    whose triangles are small against the distances between separate parts of the surface.
    """
    from scipy.spatial import cKDTree
    from trimesh.triangles import closest_point

    tri = vertices[faces].astype(np.float64)
    k = min(candidates, len(faces))
    _, cand = cKDTree(tri.mean(axis=1)).query(points, k=k, workers=-1)
    cand = cand.reshape(len(points), k)
    p = np.repeat(points.astype(np.float64), k, axis=0)
    cp = closest_point(tri[cand.reshape(-1)], p)
    return np.linalg.norm(cp - p, axis=1).reshape(len(points), k).min(axis=1)


def fit_errors(
    positions: np.ndarray,
    faces: np.ndarray,
    target: tuple[np.ndarray, np.ndarray],
    size: float,
    max_points: int = 20000,
) -> dict[str, float]:
    """Fit error of one frame relative to ``size``: ``mean``, ``p95`` and ``max`` of the distances both
    ways (fitted vertices to the frame's surface, and that surface's vertices to the fitted mesh, pooled),
    each way on at most ``max_points`` points (a fixed random sample) to bound the time."""
    tv, tf = target
    rng = np.random.default_rng(0)

    def sample(p: np.ndarray) -> np.ndarray:
        return p if len(p) <= max_points else p[rng.choice(len(p), max_points, replace=False)]

    a = surface_distances(sample(positions), tv, tf)
    b = surface_distances(sample(tv), positions, faces)
    d = np.concatenate([a, b]) / max(size, 1e-12)
    return {"mean": float(d.mean()), "p95": float(np.percentile(d, 95)), "max": float(d.max())}
