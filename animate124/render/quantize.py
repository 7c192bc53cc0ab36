"""Integer vertex data for the animated ``.glb`` (glTF ``KHR_mesh_quantization``): the numbers, no glTF.

A frame of an animated mesh costs its morph target: a position and a normal delta per vertex. As 32-bit
floats that is 24 B a vertex; here it is 8 B where the motion allows, 12 B otherwise:

* **Positions** live on one uniform integer grid, ``x = origin + step·q`` (the mesh node's translation
  and uniform scale; a uniform scale keeps normals' directions, as the extension recommends). The base
  frame's ``q`` are ``SHORT``; a target holds ``q_k − q_base`` (exact integers, so no error accumulates
  over frames) as ``BYTE`` where every delta of that frame fits ±127, else ``SHORT``. Both are stored
  un-normalised (the extension advises against signed normalised positions, which some platforms decode
  differently). :func:`position_grid` picks the step: at least the finest at which the base and every
  delta fit ``int16`` (the floor); above it, ``D/126``, the step at which every frame's displacement fits
  a byte (``D`` the largest), but never coarser than ``max_step``: a finer step would push frames into
  shorts, a coarser one loses precision for nothing, and where ``D/126`` passes ``max_step`` the frames
  that move less than ``126·max_step`` still take bytes. Every position of the file is then within
  ``step/2`` of the float one per coordinate, ``(√3/2)·step`` in distance.
* **Normals** are normalised ``BYTE``: the base's unit normals, and per target the delta from the
  *decoded* base normal (so the error of a frame's normal is that of one rounding, not two): at most
  ``0.5/127`` per component, an angle of at most 0.39°. The extension allows a normal delta only in
  [−1, 1] per component; a frame whose normals turned further than that (a rotation past 60° from the
  base frame can) keeps float deltas for its normals.

Encoding and decoding follow the extension's table: ``c = round(127·f)``, ``f = max(c/127, −1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PositionGrid", "position_grid", "quantize_unit", "quantize_delta", "decode_byte"]

#: Largest magnitude of a stored position or delta (int16), with room for the two roundings of a delta.
_SHORT_SPAN = 32766.0
#: The same for a byte delta (int8).
_BYTE_SPAN = 126.0


@dataclass(frozen=True)
class PositionGrid:
    """Positions as integers: ``x = origin + step·q``. ``origin`` and ``step`` are float32 values (what a
    viewer reads from the node's translation and scale), so the file decodes to what :meth:`snap` gives."""

    origin: tuple[float, float, float]
    step: float

    def encode(self, x: np.ndarray) -> np.ndarray:
        """``[..., 3]`` world positions -> int64 grid coordinates (nearest grid point)."""
        return np.rint((np.asarray(x, np.float64) - np.asarray(self.origin)) / self.step).astype(np.int64)

    def decode(self, q: np.ndarray) -> np.ndarray:
        """Grid coordinates -> float64 world positions."""
        return np.asarray(self.origin) + self.step * np.asarray(q, np.float64)

    def snap(self, x: np.ndarray) -> np.ndarray:
        """The positions the file holds for ``x`` (float64): each within ``step/2`` per coordinate."""
        return self.decode(self.encode(x))


def position_grid(positions: np.ndarray, base: int, max_step: float) -> PositionGrid:
    """The grid for frames ``positions [N,V,3]`` whose base is frame ``base`` (module docstring).

    Origin: the centre of the base frame's bounding box. Step: ``max(floor, min(D/126, max_step))`` with
    ``D`` the largest coordinate of any frame's displacement from the base and ``floor = max(H, D)/32766``
    (``H`` the base's half extent): the base and every delta fit ``int16``; all deltas fit a byte when
    ``D/126`` is the step."""
    p = np.asarray(positions, np.float64)
    b = p[base]
    lo, hi = b.min(axis=0), b.max(axis=0)
    origin = np.float32((lo + hi) / 2).astype(np.float64)
    half = float(np.abs(b - origin).max()) if b.size else 0.0
    reach = float(np.abs(p - b).max()) if p.size else 0.0
    floor = max(half, reach) / _SHORT_SPAN
    step = max(floor, min(reach / _BYTE_SPAN, max_step)) if max_step > 0 else floor
    if not np.isfinite(step) or step <= 0:  # a single point: any step will do
        step = 1.0
    step32 = float(np.float32(step))
    if step32 < step:  # rounding to float32 must not make the step finer than the int16 floor allows
        step32 = float(np.nextafter(np.float32(step), np.float32(np.inf)))
    return PositionGrid(origin=(float(origin[0]), float(origin[1]), float(origin[2])), step=step32)


def decode_byte(c: np.ndarray) -> np.ndarray:
    """Normalised signed bytes -> floats (the extension's ``max(c/127, −1)``)."""
    return np.maximum(np.asarray(c, np.float64) / 127.0, -1.0)


def quantize_unit(n: np.ndarray) -> np.ndarray:
    """Unit vectors ``[V,3]`` -> normalised int8 (``round(127·n)``)."""
    return np.rint(np.clip(np.asarray(n, np.float64), -1.0, 1.0) * 127.0).astype(np.int8)


def quantize_delta(delta: np.ndarray) -> np.ndarray | None:
    """A normal delta ``[V,3]`` -> normalised int8, or None where a component passes [−1, 1] (the extension
    allows no more; that frame keeps float)."""
    d = np.asarray(delta, np.float64)
    if d.size and np.abs(d).max() > 1.0:
        return None
    return np.rint(d * 127.0).astype(np.int8)
