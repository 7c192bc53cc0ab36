"""The integer grid of the animated glb's positions and the byte normals (animate124.render.quantize).

The rules are checked on random frames against their own statements: every position within half a step of
its float value, the base and every delta in ``int16``, every delta in a byte where the step is ``D/126``,
the step never coarser than ``max_step`` nor finer than the ``int16`` floor.
"""

from __future__ import annotations

import numpy as np
import pytest

from animate124.render.quantize import (
    PositionGrid,
    decode_byte,
    position_grid,
    quantize_delta,
    quantize_unit,
)


def _frames(reach: float, n: int = 5, v: int = 400, seed: int = 0) -> np.ndarray:
    """``n`` frames of ``v`` points in a box of half side 0.4 around (0.1, −0.2, 0.3), each frame moved from
    frame 0 by at most ``reach`` a coordinate (frame 1, if any, by exactly ``reach`` somewhere)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(-0.4, 0.4, (v, 3)) + [0.1, -0.2, 0.3]
    moves = rng.uniform(-reach, reach, (n, v, 3))
    moves[0] = 0.0
    if n > 1:
        moves[1, 0, 0] = reach
    return (base + moves).astype(np.float32)


def _check(grid: PositionGrid, frames: np.ndarray, base: int = 0) -> np.ndarray:
    """The statements every grid must meet; returns the largest |delta| in steps."""
    q = grid.encode(frames)
    assert np.abs(q[base]).max() <= 32767 and np.abs(q - q[base]).max() <= 32767
    assert np.abs(grid.snap(frames) - frames).max() <= grid.step / 2 * (1 + 1e-9)
    assert np.array_equal(grid.snap(grid.snap(frames)), grid.snap(frames))  # snapping twice changes nothing
    assert grid.step == float(np.float32(grid.step))  # what a viewer reads from the node's scale
    assert all(o == float(np.float32(o)) for o in grid.origin)
    return np.abs(q - q[base]).max()


def test_a_small_motion_takes_the_byte_step():
    frames = _frames(reach=0.01)
    grid = position_grid(frames, 0, max_step=1e-3)
    assert grid.step == pytest.approx(0.01 / 126, rel=1e-6)
    assert _check(grid, frames) <= 127


def test_a_large_motion_is_capped_at_max_step_and_the_near_frames_still_fit_a_byte():
    frames = _frames(reach=0.2)
    frames[2] = frames[0] + 0.05 * (frames[2] - frames[0]) / 0.2  # a frame that moves 0.05 at most
    grid = position_grid(frames, 0, max_step=1e-3)
    assert grid.step == pytest.approx(1e-3, rel=1e-6)
    assert _check(grid, frames) > 127
    assert np.abs(grid.encode(frames[2]) - grid.encode(frames[0])).max() <= 127


def test_a_still_mesh_and_a_fine_cap_take_the_int16_floor():
    frames = _frames(reach=0.0, n=1)
    half = float(np.abs(frames[0] - (frames[0].min(0) + frames[0].max(0)) / 2).max())
    for cap in (1.0, 1e-9):
        grid = position_grid(frames, 0, max_step=cap)
        assert grid.step == pytest.approx(half / 32766, rel=1e-6)
        _check(grid, frames)
    # a motion larger than the object: the deltas, not the base, set the floor
    frames = _frames(reach=3.0)
    grid = position_grid(frames, 2, max_step=1e-9)
    assert grid.step == pytest.approx(np.abs(frames - frames[2]).max() / 32766, rel=1e-6)
    _check(grid, frames, base=2)


def test_byte_normals_round_and_decode_as_the_extension_says():
    rng = np.random.default_rng(1)
    n = rng.normal(size=(500, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    c = quantize_unit(n)
    assert c.dtype == np.int8 and np.abs(decode_byte(c) - n).max() <= 0.5 / 127 + 1e-12
    assert decode_byte(np.array([-128, -127, 127])).tolist() == [-1.0, -1.0, 1.0]
    d = quantize_delta(n * 0.9)
    assert d is not None and np.abs(decode_byte(d) - n * 0.9).max() <= 0.5 / 127 + 1e-12
    assert quantize_delta(n * 1.5) is None  # past [−1, 1]: that frame keeps floats
