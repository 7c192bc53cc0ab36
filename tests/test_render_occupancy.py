"""Occupancy grid (SPEC §3.2, fix of §11.2) against a brute-force reference on a small grid."""

from __future__ import annotations

import itertools

import pytest
import torch

from animate124.scene.occupancy import OccupancyGrid

R, B = 8, 1.0


def _cell_value(ix: int, iy: int, iz: int, slot: int) -> float:
    """Piecewise-constant test density, a function of the cell and time slot only."""
    return float((ix * 7 + iy * 3 + iz * 5 + 11 * slot) % 13) * (1.0 if (ix + iy + iz) % 3 else 0.0)


def _density_fn(slots: int):
    def fn(x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        ijk = ((x + B) / (2 * B) * R).floor().long().clamp(0, R - 1)
        s = torch.zeros(x.shape[0], dtype=torch.long) if t is None else (t[:, 0] * slots).floor().long()
        vals = (ijk[:, 0] * 7 + ijk[:, 1] * 3 + ijk[:, 2] * 5 + 11 * s) % 13
        keep = (ijk.sum(-1) % 3) != 0
        return vals.float() * keep.float()

    return fn


def _brute(slots: int, scale: float = 1.0) -> torch.Tensor:
    ref = torch.zeros(slots, R**3)
    for s in range(slots):
        for ix, iy, iz in itertools.product(range(R), repeat=3):
            ref[s, (ix * R + iy) * R + iz] = scale * _cell_value(ix, iy, iz, s)
    return ref


@pytest.mark.parametrize("slots", [1, 4])
def test_update_matches_brute_force(slots):
    occ = OccupancyGrid(resolution=R, num_slots=slots, bound=B, density_thresh=10.0, decay=0.95)
    assert occ.bitfield.all()  # everything occupied before the first update
    g = torch.Generator().manual_seed(0)
    occ.update(_density_fn(slots), generator=g, chunk=97)
    ref = _brute(slots)
    torch.testing.assert_close(occ.grid, ref)
    mean = ref.mean()
    torch.testing.assert_close(occ.mean_density, mean)
    assert torch.equal(occ.bitfield, ref > min(mean.item(), 10.0))
    # second update with a weaker field: grid = max(0.95·grid, new)
    half = _density_fn(slots)
    occ.update(lambda x, t: 0.5 * half(x, t), generator=g)
    ref2 = torch.maximum(0.95 * ref, 0.5 * ref)
    torch.testing.assert_close(occ.grid, ref2)
    assert torch.equal(occ.bitfield, ref2 > min(ref2.mean().item(), 10.0))


def test_threshold_capped_by_density_thresh():
    occ = OccupancyGrid(resolution=R, num_slots=1, bound=B, density_thresh=3.0)
    occ.update(lambda x, t: 100.0 * _density_fn(1)(x, t))
    assert occ.mean_density.item() > 3.0
    assert torch.equal(occ.bitfield[0], occ.grid[0] > 3.0)


@pytest.mark.parametrize("bug", [False, True])
def test_query_points_and_times(bug):
    slots = 4
    occ = OccupancyGrid(resolution=R, num_slots=slots, bound=B, upstream_times_bug=bug)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def fn(x, t):
        seen.append((x.clone(), t.clone()))
        return torch.zeros(x.shape[0])

    occ.update(fn, generator=torch.Generator().manual_seed(1), chunk=R**3)
    assert len(seen) == slots
    centers = occ.cell_centers()
    half = B / R
    expect_times = [0.5] * slots if bug else [(k + 0.5) / slots for k in range(slots)]
    for s, (x, t) in enumerate(seen):
        assert x.shape == (R**3, 3) and t.shape == (R**3, 1)
        assert (x - centers).abs().max() <= half + 1e-6  # jitter within ± half a voxel
        assert (x - centers).abs().max() > 0.5 * half  # and actually jittered
        assert (t - expect_times[s]).abs().max() <= 0.5 / slots + 1e-6
        idx, inside = occ.cell_index(x)
        assert inside.all() and torch.equal(idx, torch.arange(R**3))


def test_static_grid_passes_no_time():
    occ = OccupancyGrid(resolution=4, num_slots=1)
    got = []
    occ.update(lambda x, t: got.append(t) or torch.ones(x.shape[0]))
    assert got == [None]


def test_slot_times_survive_checkpoint_load():
    static = OccupancyGrid(resolution=R, num_slots=1)
    static.update(_density_fn(1))
    dyn = OccupancyGrid(resolution=R, num_slots=16)
    dyn.replicate_from(static)
    assert torch.equal(dyn.bitfield, static.bitfield.expand(16, -1))
    torch.testing.assert_close(dyn.times, (torch.arange(16.0) + 0.5) / 16)
    sd = dyn.state_dict()
    assert set(sd) == {"grid", "bitfield", "mean_density"}  # times are not state: never overwritten
    other = OccupancyGrid(resolution=R, num_slots=16)
    other.load_state_dict(sd)
    torch.testing.assert_close(other.times, (torch.arange(16.0) + 0.5) / 16)
    assert torch.equal(other.bitfield, dyn.bitfield)


def test_slot_for_time_and_occupied():
    occ = OccupancyGrid(resolution=2, num_slots=16, bound=1.0)
    t = torch.tensor([0.0, 1 / 16 - 1e-6, 1 / 16, 0.5, 63 / 64, 1.0, 1.5, -0.1])
    assert occ.slot_for_time(t).tolist() == [0, 0, 1, 8, 15, 15, 15, 0]
    occ.bitfield.zero_()
    occ.bitfield[3, (1 * 2 + 0) * 2 + 1] = True  # cell x>0, y<0, z>0 in slot 3
    x = torch.tensor([[0.5, -0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, 0.5], [1.5, -0.5, 0.5]])
    got = occ.occupied(x, torch.tensor([3, 2, 3, 3]))
    assert got.tolist() == [True, False, False, False]  # wrong slot, wrong cell, outside the box
    assert occ.union().sum().item() == 1
