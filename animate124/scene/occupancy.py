"""Occupancy grid for empty-space skipping, one slot per time range (SPEC §3.2, fix of §11.2).

A grid of R³ cells over [−bound, bound]³ per time slot (1 slot for a static field, 16 for the 4D
field). ``update`` follows upstream's ``update_extra_state`` (``dnerf/renderer.py:270-335``):

    for every slot s and cell c:  σ_new = density(centre_c + U(±half voxel)³, times[s] + U(±0.5/S))
    grid = max(decay·grid, σ_new)                                     (decay 0.95)
    mean_density = mean(grid)        (over all slots and cells, one scalar, as upstream)
    bitfield = grid > min(mean_density, density_thresh)               (density_thresh 10)

Differences from upstream, on purpose:

* Slot times are ``(k + 0.5)/S`` computed from ``num_slots``; they are not a buffer, so loading a
  checkpoint (in particular the static one into the 4D model) can never overwrite them — upstream's
  size-mismatch broadcast collapsed them all to 0.5 (SPEC §11.2). ``upstream_times_bug=True``
  reproduces the collapse (every slot refreshed at t ≈ 0.5).
* The jitter in position *and* time is drawn per query point (upstream draws the time jitter once per
  slot and chunk); results then do not depend on the chunk size.
* Cells are indexed linearly, ``idx = ix·R² + iy·R + iz`` with ``ix`` along world x (upstream uses
  Morton order inside its CUDA bitfield; the order is internal).
* Before the first update every cell is occupied (upstream updates at step 0, so this only matters for
  renders before any update).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from animate124.errors import Animate124Error

__all__ = ["OccupancyGrid", "OccupancyError"]

DensityFn = Callable[[Tensor, Tensor | None], Tensor]


class OccupancyError(Animate124Error):
    """Invalid occupancy-grid arguments."""


class OccupancyGrid(nn.Module):
    """Per-time-slot occupancy grid.

    Buffers (saved in checkpoints): ``grid`` [S, R³] float32 decayed-max density, ``bitfield``
    [S, R³] bool, ``mean_density`` [] float32.

    Args:
        resolution: R, cells per axis (128 upstream).
        num_slots: S, 1 for a static field, 16 in the dynamic stages.
        bound: half side of the box [−bound, bound]³.
        density_thresh: upper limit of the occupancy threshold (10 upstream).
        decay: EMA-max decay per update (0.95).
        dynamic: whether ``density_fn`` receives times; defaults to ``num_slots > 1``.
        upstream_times_bug: refresh every slot at t = 0.5 like upstream after loading a static
            checkpoint (SPEC §11.2). Off by default.
    """

    grid: Tensor
    bitfield: Tensor
    mean_density: Tensor

    def __init__(
        self,
        resolution: int = 128,
        num_slots: int = 1,
        bound: float = 1.0,
        density_thresh: float = 10.0,
        decay: float = 0.95,
        dynamic: bool | None = None,
        upstream_times_bug: bool = False,
    ) -> None:
        super().__init__()
        if resolution < 1 or num_slots < 1 or bound <= 0:
            raise OccupancyError(
                f"bad occupancy grid (resolution={resolution}, num_slots={num_slots}, bound={bound})",
                "resolution and num_slots must be >= 1 and bound > 0",
            )
        self.resolution = int(resolution)
        self.num_slots = int(num_slots)
        self.bound = float(bound)
        self.density_thresh = float(density_thresh)
        self.decay = float(decay)
        self.dynamic = (num_slots > 1) if dynamic is None else bool(dynamic)
        self.upstream_times_bug = bool(upstream_times_bug)
        n = self.resolution**3
        self.register_buffer("grid", torch.zeros(self.num_slots, n))
        self.register_buffer("bitfield", torch.ones(self.num_slots, n, dtype=torch.bool))
        self.register_buffer("mean_density", torch.zeros(()))

    # ------------------------------------------------------------------ geometry
    @property
    def voxel_size(self) -> float:
        return 2.0 * self.bound / self.resolution

    @property
    def times(self) -> Tensor:
        """[S] slot times ``(k+0.5)/S`` (or all 0.5 with ``upstream_times_bug``)."""
        if self.upstream_times_bug:
            return torch.full((self.num_slots,), 0.5, device=self.grid.device)
        return (
            torch.arange(self.num_slots, device=self.grid.device, dtype=torch.float32) + 0.5
        ) / self.num_slots

    def cell_centers(self) -> Tensor:
        """[R³, 3] cell centres in linear cell order."""
        r = self.resolution
        c = (
            torch.arange(r, device=self.grid.device, dtype=torch.float32) + 0.5
        ) * self.voxel_size - self.bound
        gx, gy, gz = torch.meshgrid(c, c, c, indexing="ij")
        return torch.stack([gx, gy, gz], dim=-1).reshape(-1, 3)

    def cell_index(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """[N, 3] points -> linear cell index [N] (clamped into range) and inside-the-box mask [N]."""
        r = self.resolution
        u = (x + self.bound) / (2.0 * self.bound)
        inside = ((u >= 0) & (u <= 1)).all(dim=-1)
        ijk = (u * r).floor().long().clamp_(0, r - 1)
        return (ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2], inside

    def slot_for_time(self, t: Tensor) -> Tensor:
        """[...] times in [0,1] -> [...] long slot ``clamp(⌊t·S⌋, 0, S−1)`` (SPEC §3.2, §7)."""
        return (t * self.num_slots).floor().long().clamp_(0, self.num_slots - 1)

    def occupied(self, x: Tensor, slot: Tensor | int = 0) -> Tensor:
        """[N, 3] points, [N] (or scalar) slots -> [N] bool; False outside the box."""
        idx, inside = self.cell_index(x)
        if isinstance(slot, int):
            occ = self.bitfield[slot][idx]
        else:
            occ = (
                self.bitfield[slot.to(self.grid.device), idx] if slot.ndim else self.bitfield[int(slot)][idx]
            )
        return occ & inside

    def union(self) -> Tensor:
        """[R³] bool: occupied in any slot (a conservative time-independent view)."""
        return self.bitfield.any(dim=0)

    def occupancy_ratio(self) -> Tensor:
        """[S] fraction of occupied cells per slot (diagnostic)."""
        return self.bitfield.float().mean(dim=1)

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def update(
        self,
        density_fn: DensityFn,
        generator: torch.Generator | None = None,
        chunk: int = 2**18,
    ) -> None:
        """One EMA-max refresh of every slot (see module docstring).

        ``density_fn(x [N,3], t [N,1] | None) -> σ [N]``; t is None when ``dynamic`` is False.
        ``generator`` (on any device) makes the jitter reproducible.
        """
        dev = self.grid.device
        gdev = generator.device if generator is not None else dev
        centers = self.cell_centers()
        n = centers.shape[0]
        half = 0.5 * self.voxel_size
        new = torch.empty_like(self.grid)
        for s, t_slot in enumerate(self.times.tolist()):
            jitter = (torch.rand(n, 3, generator=generator, device=gdev).to(dev) * 2 - 1) * half
            x = centers + jitter
            if self.dynamic:
                tj = (torch.rand(n, 1, generator=generator, device=gdev).to(dev) * 2 - 1) * (
                    0.5 / self.num_slots
                )
                t = t_slot + tj
            for i in range(0, n, chunk):
                ti = t[i : i + chunk] if self.dynamic else None
                new[s, i : i + chunk] = density_fn(x[i : i + chunk], ti).reshape(-1).float()
        self.grid.copy_(torch.maximum(self.grid * self.decay, new))
        self.mean_density.copy_(self.grid.mean())
        self._repack()

    def _repack(self) -> None:
        thresh = torch.clamp(self.mean_density, max=self.density_thresh)
        self.bitfield.copy_(self.grid > thresh)

    @torch.no_grad()
    def replicate_from(self, other: OccupancyGrid) -> None:
        """Copy a (static, 1-slot) grid into every slot, as upstream does when the 4D model starts
        from the static checkpoint (SPEC §3.1 ``from_pretrained_3d``); slot times stay our own."""
        if other.resolution != self.resolution:
            raise OccupancyError(
                f"cannot replicate a {other.resolution}^3 grid into a {self.resolution}^3 grid",
                "use the same occupancy resolution in both stages",
            )
        src_grid = other.grid.to(self.grid.device)
        src_bits = other.bitfield.to(self.grid.device)
        if other.num_slots == self.num_slots:
            self.grid.copy_(src_grid)
            self.bitfield.copy_(src_bits)
        else:
            self.grid.copy_(src_grid.amax(dim=0, keepdim=True).expand_as(self.grid))
            self.bitfield.copy_(src_bits.any(dim=0, keepdim=True).expand_as(self.bitfield))
        self.mean_density.copy_(other.mean_density)

    @torch.no_grad()
    def mark_all_occupied(self) -> None:
        """Reset the bitfield to all occupied (e.g. before the first update)."""
        self.bitfield.fill_(True)
