"""Pictures of an exported mesh (not of the field): a turntable for the report and a quick look.

There is no OpenGL on a headless machine, so the triangles are drawn with the painter's algorithm, as
matplotlib's 3-D polygons are: faces turned away from the camera are dropped, the others are sorted
far to near and filled by PIL (at twice the size, then downsampled, for smooth edges). Each face has
one colour: its albedo (the texture at its UV centroid, or the mean of its vertex colours) times a
Lambert term for a light from the camera's upper left. Cameras are the renderer's
(:func:`animate124.render.cameras.camera_from_spherical`, same projection), so the pictures line up
with the rendered videos of the field.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["render_mesh_view", "turntable_grid", "turntable_images", "face_albedo"]


def face_albedo(
    faces: np.ndarray,
    *,
    colors: np.ndarray | None = None,
    uv: np.ndarray | None = None,
    texture: np.ndarray | None = None,
) -> np.ndarray:
    """``[F,3]`` float in [0,1]: the texture at each face's UV centroid, else its vertex colours' mean."""
    from animate124.render.texture import sample_texture

    if uv is not None and texture is not None:
        return sample_texture(texture, uv[faces].mean(axis=1)).astype(np.float64) / 255.0
    if colors is not None:
        return colors[faces].astype(np.float64).mean(axis=1) / 255.0
    return np.full((len(faces), 3), 0.7)


def render_mesh_view(
    vertices: np.ndarray,
    faces: np.ndarray,
    albedo: np.ndarray,
    *,
    polar: float = 75.0,
    azimuth: float = 0.0,
    radius: float = 1.8,
    fovy: float = 40.0,
    size: int = 192,
    background: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """One view ``[size,size,3]`` uint8 of the mesh with per-face ``albedo [F,3]`` (module docstring)."""
    from PIL import Image, ImageDraw

    from animate124.render.cameras import camera_from_spherical

    cam = camera_from_spherical(polar, azimuth, radius, fovy, size, size)
    c2w = cam.c2w[0].double().numpy()
    right, up, fwd, centre = c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3]
    ss = 2 * size
    f = ss / (2.0 * np.tan(np.deg2rad(fovy) / 2.0))
    v = vertices.astype(np.float64) - centre
    depth = -(v @ fwd)  # > 0 in front of the camera
    x = ss / 2 + f * (v @ right) / np.maximum(depth, 1e-6)
    y = ss / 2 - f * (v @ up) / np.maximum(depth, 1e-6)
    tri = vertices[faces].astype(np.float64)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)
    to_cam = centre - tri.mean(axis=1)
    keep = ((n * to_cam).sum(1) > 0) & (depth[faces] > 1e-3).all(axis=1)
    light = fwd + 0.6 * up - 0.4 * right  # fwd points from the scene to the camera
    light /= np.linalg.norm(light)
    shade = 0.3 + 0.7 * np.clip(n @ light, 0.0, 1.0)
    rgb = np.clip(albedo * shade[:, None], 0.0, 1.0)
    order = np.flatnonzero(keep)
    order = order[np.argsort(-depth[faces[order]].mean(axis=1), kind="stable")]
    bg = tuple(int(round(255 * c)) for c in background)
    img = Image.new("RGB", (ss, ss), bg)
    draw = ImageDraw.Draw(img)
    px = np.stack([x, y], axis=1)[faces]
    cols = np.round(rgb * 255).astype(np.uint8)
    for i in order.tolist():
        c = tuple(int(k) for k in cols[i])
        draw.polygon([tuple(p) for p in px[i].tolist()], fill=c, outline=c)
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS))


def turntable_grid(tiles: Sequence[Sequence[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Rows of equal-size tiles -> one ``[H,W,3]`` uint8 image on white, ``pad`` pixels apart."""
    rows = [list(r) for r in tiles if len(r)]
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, tile in enumerate(r):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = tile
    return out


def turntable_images(
    positions: np.ndarray,
    faces: np.ndarray,
    albedo: np.ndarray,
    *,
    views: int = 8,
    size: int = 192,
    radius: float = 1.8,
    fovy: float = 40.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pictures of a mesh at N frames (``positions [N,V,3]``): a grid (with N > 1, row 1 shows the front
    at up to ``views`` times over the motion; the last row goes around frame 0 in ``views`` steps) and the
    frames ``[M,size,size,3]`` of a turn of the camera while the motion plays (M = 2N within [24, 96])."""
    n = len(positions)

    def view(k: int, azimuth: float) -> np.ndarray:
        return render_mesh_view(
            positions[k], faces, albedo, azimuth=azimuth, radius=radius, fovy=fovy, size=size
        )

    rows = []
    if n > 1:
        ks = np.unique(np.round(np.linspace(0, n - 1, min(views, n))).astype(int))
        rows.append([view(int(k), 0.0) for k in ks])
    rows.append([view(0, 360.0 * i / views) for i in range(views)])
    m = min(max(2 * n, 24), 96)
    frames = np.stack([view(min(n - 1, i * n // m), 360.0 * i / m) for i in range(m)])
    return turntable_grid(rows), frames
