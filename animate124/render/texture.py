"""The albedo of a field baked into a texture: a UV atlas by xatlas, texels filled from the field.

1. :func:`uv_atlas`: xatlas (the library behind Blender's and Godot's lightmap unwrapping) cuts the
   mesh into charts and packs them into the unit square. Vertices on a cut are duplicated, so the
   atlas returns ``vmap`` (the original vertex of each new vertex) and new faces.
2. :func:`bake_albedo`: every texel whose centre lies in a chart's triangle becomes a point on the
   surface (the triangle's barycentric combination of its 3-D corners) where the field's albedo is
   read. Which triangle covers which texel is found by PIL's polygon fill drawing triangle numbers
   into an integer image; the barycentric coordinates are then computed exactly (clamped into the
   triangle for texels on an edge). Texels outside every chart but within ``gutter`` texels of one take
   the colour of the nearest covered texel, so bilinear filtering and mipmaps do not pull in the
   background at chart edges.

UV convention: glTF's, (0, 0) at the image's top-left, u to the right, v down; texel (row i, column j)
has its centre at ``((j + 0.5)/S, (i + 0.5)/S)``. The image holds the albedo as the field gives it
(sRGB-encoded like the training images), which is what glTF's base-colour texture holds.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from animate124.render.mesh import MeshError

__all__ = ["uv_atlas", "bake_albedo", "png_bytes", "sample_texture"]


def uv_atlas(
    vertices: np.ndarray, faces: np.ndarray, size: int = 1024, padding: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts packed into the unit square for a ``size``² texture with ``padding`` texels
    between charts -> ``vmap [V'] int64, faces [F,3] int64, uv [V',2] float32``."""
    try:
        import xatlas
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise MeshError(
            "the texture atlas needs the xatlas package",
            hint="pip install xatlas, or --set export.texture=vertex",
        ) from e

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    if atlas.atlas_count != 1:
        raise MeshError(
            f"the UV atlas needs {atlas.atlas_count} textures of {size}²",
            hint="raise export.texture_size or lower export.max_faces, or --set export.texture=vertex",
        )
    vmap, idx, uv = atlas[0]
    return vmap.astype(np.int64), idx.astype(np.int64), np.clip(uv, 0.0, 1.0).astype(np.float32)


def _triangle_ids(uv: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """``[S,S]`` int32: the triangle drawn over each texel (−1: none), by PIL's polygon fill."""
    from PIL import Image, ImageDraw

    img = Image.new("I", (size, size), -1)
    draw = ImageDraw.Draw(img)
    px = uv[faces] * size - 0.5  # [F,3,2] in pixel-centre coordinates
    for i, tri in enumerate(px.tolist()):
        draw.polygon([tuple(p) for p in tri], fill=i)
    return np.asarray(img, dtype=np.int32)


def _barycentric(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Barycentric coordinates ``[P,3]`` of 2-D points ``p [P,2]`` in triangles ``tri [P,3,2]``, clamped
    into the triangle (non-negative, summing to 1)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1, v2 = b - a, c - a, p - a
    d00 = (v0 * v0).sum(1)
    d01 = (v0 * v1).sum(1)
    d11 = (v1 * v1).sum(1)
    d20 = (v2 * v0).sum(1)
    d21 = (v2 * v1).sum(1)
    den = d00 * d11 - d01 * d01
    den = np.where(np.abs(den) > 1e-20, den, 1e-20)
    w1 = (d11 * d20 - d01 * d21) / den
    w2 = (d00 * d21 - d01 * d20) / den
    w = np.stack([1.0 - w1 - w2, w1, w2], axis=1).clip(0.0, None)
    s = w.sum(1, keepdims=True)
    return np.where(s > 0, w / np.where(s > 0, s, 1.0), 1.0 / 3.0)


@torch.no_grad()
def bake_albedo(
    field: Any,
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    size: int,
    *,
    t: float | None = None,
    gutter: int = 4,
    chunk: int = 2**17,
) -> np.ndarray:
    """The field's albedo at time ``t`` on the mesh ``(vertices [V,3], faces [F,3])`` with ``uv [V,2]``
    -> ``[S,S,3]`` uint8 texture (module docstring)."""
    from scipy.ndimage import distance_transform_edt

    from animate124.render.mesh import vertex_colors

    ids = _triangle_ids(uv, faces, size)
    rows, cols = np.nonzero(ids >= 0)
    if len(rows) == 0:
        raise MeshError("the UV atlas covers no texel", hint="raise export.texture_size")
    tri_id = ids[rows, cols]
    centres = (np.stack([cols, rows], axis=1) + 0.5) / size
    w = _barycentric(centres, uv[faces[tri_id]].astype(np.float64))
    pts = (w[:, :, None] * vertices[faces[tri_id]].astype(np.float64)).sum(1).astype(np.float32)
    img = np.zeros((size, size, 3), np.uint8)
    img[rows, cols] = vertex_colors(field, pts, t, chunk=chunk)
    empty = ids < 0
    dist, (ni, nj) = distance_transform_edt(empty, return_indices=True)
    fill = empty & (dist <= gutter)
    img[fill] = img[ni[fill], nj[fill]]
    return img


def sample_texture(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest-texel colours ``[P,3]`` of ``image [S,S,3]`` at ``uv [P,2]`` (glTF convention)."""
    s_h, s_w = image.shape[:2]
    j = np.clip((uv[:, 0] * s_w).astype(np.int64), 0, s_w - 1)
    i = np.clip((uv[:, 1] * s_h).astype(np.int64), 0, s_h - 1)
    return image[i, j]


def png_bytes(image: np.ndarray) -> bytes:
    """``[H,W,3]`` uint8 -> PNG file bytes (zlib level 9; the texture is the largest part of a glb)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
