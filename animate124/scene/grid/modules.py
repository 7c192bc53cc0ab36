"""The grid encoders as ``nn.Module``: static (:class:`GridEncoding`) and time-stacked
(:class:`TimeGridEncoding`), plus :func:`make_grid_encoding` (which also builds the tcnn encoder).

Backends: ``torch`` (:mod:`.reference`, CPU/GPU, autograd), ``triton`` (:mod:`.launch`: fused forward
and table-gradient kernels; no gradient w.r.t. positions or times, which nothing in SPEC needs since
normals are finite differences) and, through :func:`make_grid_encoding`, optional ``tcnn``
(:mod:`.tcnn`, different table layout). ``auto`` is resolved on every call from the input device.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor, nn

from animate124.errors import ConfigError
from animate124.scene.grid import launch
from animate124.scene.grid.layout import GridEncodingConfig, LevelBuffers, grid_layout
from animate124.scene.grid.options import KernelOptions
from animate124.scene.grid.reference import TableTimeTV, encode_torch
from animate124.scene.grid.tcnn import TcnnGridEncoding
from animate124.scene.grid.timetv import BatchedPointsTimeTV, PointsTimeTV, batched_tv_pass
from animate124.scene.grid.tvgraph import TVGraph
from animate124.scene.timeruns import TimeRuns, expand_runs
from animate124.transfer import to_device

Backend = Literal["auto", "torch", "triton", "tcnn"]
TimeTVMode = Literal["points", "table"]


def resolve_backend(backend: Backend, device: torch.device) -> str:
    """``auto`` -> triton on CUDA when importable, else torch (SPEC 3.1 speed note).

    Under ``torch.use_deterministic_algorithms(True)`` (``run.deterministic``) ``auto`` is torch: the Triton
    backward adds the table gradients with atomics, in an order that changes from run to run; the torch
    encoder's gather differentiates to ``index_add_``, which PyTorch then runs in a fixed order.
    """
    if backend == "auto":
        if torch.are_deterministic_algorithms_enabled():
            return "torch"
        return "triton" if launch.is_available(device) else "torch"
    if backend == "triton" and not launch.is_available(device):
        raise ConfigError(
            f"triton grid backend requested but not usable on {device}",
            "install triton and run on CUDA (or set TRITON_INTERPRET=1 for CPU tests), or use backend 'torch'",
        )
    return backend


def broadcast_time(t: Tensor | float, n: int) -> Tensor:
    """Times as ``[N, 1]``: accepts ``[N,1]``, ``[N]``, ``[1,1]``, ``[1]`` or a scalar."""
    if not isinstance(t, Tensor):
        t = torch.tensor(float(t))
    if t.dim() == 0:
        return t.reshape(1, 1).expand(n, 1)
    t = t.reshape(-1, 1)
    if t.shape[0] == 1:
        return t.expand(n, 1)
    if t.shape[0] != n:
        raise ValueError(f"times have {t.shape[0]} rows for {n} points")
    return t


def _unit_coords(x: Tensor, bound: float) -> Tensor:
    """World ``[-bound, bound]^3`` -> unit cube, ``[N, 3]`` float32 (as upstream ``(x+b)/(2b)``)."""
    return (x.float() + bound) / (2 * bound)


def _check_points(x: Tensor) -> None:
    if x.dim() != 2 or x.shape[-1] != 3:
        raise ValueError(f"grid encoder expects points [N, 3], got {tuple(x.shape)}")


def _check_backend(backend: str, allowed: tuple[str, ...]) -> None:
    if backend == "tcnn":
        raise ConfigError(
            "this encoder has the torch-ngp table layout; tcnn uses its own (and has no time-stacked grid)",
            "build the static tcnn encoder with animate124.scene.grid.make_grid_encoding(cfg, backend='tcnn')",
        )
    if backend not in allowed:
        raise ConfigError(f"unknown grid backend {backend!r}", f"use one of {', '.join(allowed)}")


class _GridBase(nn.Module):
    """Shared by the static and time-stacked encoders: layout, buffers, options, dispatch."""

    def __init__(
        self, cfg: GridEncodingConfig, backend: Backend, bound: float, options: KernelOptions | None
    ):
        super().__init__()
        _check_backend(backend, ("auto", "torch", "triton"))
        self.cfg = cfg
        self.backend = backend
        self.bound = float(bound)
        self.kernel_options = options if options is not None else KernelOptions()
        self.launch_state = launch.LaunchState()
        self.layout = grid_layout(cfg, self.bound)
        self.num_levels = cfg.num_levels
        self.level_dim = cfg.level_dim
        self.output_dim = cfg.output_dim
        self.bufs = LevelBuffers(self.layout)
        self.register_buffer("offsets", torch.tensor(self.layout.offsets, dtype=torch.int32))

    def reset_parameters(self) -> None:
        r = self.cfg.init_range
        nn.init.uniform_(self.embeddings, -r, r)

    def _active_levels(self, max_level: int | None) -> int:
        if max_level is None:
            return self.num_levels
        return max(0, min(int(max_level), self.num_levels))

    def _encode(
        self, u: Tensor, table: Tensor, n_active: int, time: tuple[Tensor, int, int] | None = None,
        options: KernelOptions | None = None,
    ) -> Tensor:  # fmt: skip
        """Torch or Triton encoding of unit-cube points; returns ``[N, L·C]`` with inactive levels zero.

        ``time``: optional ``(t [N] in [0,1], T, entries_per_grid)`` for a stacked ``[T·E, C]`` table.
        """
        n, c, num_levels = u.shape[0], self.level_dim, self.num_levels
        if n_active == 0 or n == 0:
            return u.new_zeros(n, num_levels * c, dtype=torch.float32)
        if resolve_backend(self.backend, u.device) == "triton":
            t, t_size, e = time if time is not None else (None, 1, 0)
            return launch.grid_encode(
                u, table, self.bufs, n_active, num_levels, c, self.cfg.interpolation,
                options or self.kernel_options, self.launch_state, t=t, time_grid_size=t_size, entries_per_grid=e,
            )  # fmt: skip
        rows = None
        if time is not None:
            t, t_size, e = time
            g = t.reshape(-1, 1).float() * (t_size - 1)
            lo = torch.floor(g)
            rows = (lo.long() * e, torch.ceil(g).long() * e, g - lo)
        out = encode_torch(u, table, self.bufs, n_active, c, self.cfg.interpolation, rows).reshape(
            n, n_active * c
        )
        if n_active < num_levels:
            out = torch.cat([out, out.new_zeros(n, (num_levels - n_active) * c)], dim=1)
        return out


class GridEncoding(_GridBase):
    """One spatial grid: ``forward(x [N,3] in [-bound,bound]) -> [N, L·C]`` (SPEC 3.1).

    Parameters: ``embeddings [total_entries, C]`` (U(-init_range, init_range)); buffer ``offsets [L+1]``
    (int32, like torch-ngp). ``kernel_options`` choose the Triton kernels; ``launch_state`` records what
    they did. The tcnn backend has its own table layout; build it with :func:`make_grid_encoding`.
    """

    def __init__(
        self, cfg: GridEncodingConfig, *, backend: Backend, bound: float = 1.0,
        kernel_options: KernelOptions | None = None,
    ) -> None:  # fmt: skip
        super().__init__(cfg, backend, bound, kernel_options)
        self.embeddings = nn.Parameter(torch.empty(self.layout.total_entries, self.level_dim))
        self.reset_parameters()

    def forward(self, x: Tensor, max_level: int | None = None) -> Tensor:
        """``x [N,3]`` world points -> features ``[N, L·C]``; levels ``>= max_level`` are zero."""
        _check_points(x)
        return self._encode(_unit_coords(x, self.bound), self.embeddings, self._active_levels(max_level))

    def encode_with_table(self, u: Tensor, table: Tensor, max_level: int | None = None) -> Tensor:
        """Encode unit-cube points ``u [N,3]`` with an arbitrary table ``[E, C]`` of this layout."""
        return self._encode(u, table, self._active_levels(max_level))

    def extra_repr(self) -> str:
        return (
            f"{self.cfg.grid_type}, L={self.num_levels}, C={self.level_dim}, "
            f"entries={self.layout.total_entries}, bound={self.bound}, backend={self.backend}"
        )


class TimeGridEncoding(_GridBase):
    """``T`` spatial grids stacked in one parameter ``embeddings [T, E, C]`` (SPEC 3.1 "Time", 11.16).

    ``forward(x [N,3], t [N,1] in [0,1]) -> [N, L·C]`` with ``g = t·(T−1)``, ``lo = ⌊g⌋``, ``hi = ⌈g⌉``
    and ``f = f_hi(x)·(g−lo) + f_lo(x)·(1−(g−lo))``; both time grids are read in one gather pass.
    """

    def __init__(
        self, cfg: GridEncodingConfig, *, time_grid_size: int, backend: Backend, bound: float = 1.0,
        kernel_options: KernelOptions | None = None,
    ) -> None:  # fmt: skip
        if time_grid_size < 1:
            raise ConfigError(f"time_grid_size must be >= 1, got {time_grid_size}")
        super().__init__(cfg, backend, bound, kernel_options)
        self.time_grid_size = int(time_grid_size)
        self.entries_per_grid = self.layout.total_entries
        self.embeddings = nn.Parameter(
            torch.empty(self.time_grid_size, self.entries_per_grid, self.level_dim)
        )
        self._tv_graph: TVGraph | None = None  # KernelOptions.tv_cuda_graph: made on the first time TV
        self.reset_parameters()

    @classmethod
    def from_static(
        cls, static: GridEncoding, *, time_grid_size: int, backend: Backend | None = None
    ) -> TimeGridEncoding:
        """Copy a static grid's table into all ``T`` slots (SPEC 3.1 ``from_pretrained_3d``).

        Same config, bound and kernel options; ``backend`` defaults to the static encoder's. The result
        is on the static table's device and owns its table (no storage shared with ``static``).
        """
        enc = cls(
            static.cfg, time_grid_size=time_grid_size, backend=backend or static.backend, bound=static.bound,
            kernel_options=static.kernel_options,
        )  # fmt: skip
        enc.to(device=static.embeddings.device)
        with torch.no_grad():
            enc.embeddings.copy_(
                static.embeddings.detach().to(enc.embeddings.dtype).expand_as(enc.embeddings)
            )
        return enc

    def forward(
        self, x: Tensor, t: Tensor, max_level: int | None = None, runs: TimeRuns | None = None
    ) -> Tensor:
        """``x [N,3]``, ``t [N,1]`` (or ``[1,1]``/``[N]``/scalar) -> features ``[N, L·C]``.

        ``runs``: the points' times as host-side runs (:class:`~animate124.scene.timeruns.TimeRuns`, the
        values ``t`` holds); lets the clip path skip reading the times back from the device."""
        _check_points(x)
        n_active = self._active_levels(max_level)
        u = _unit_coords(x, self.bound)
        tt = broadcast_time(t, x.shape[0]).float().clamp(0.0, 1.0).reshape(-1).contiguous()
        if n_active > 0:
            out = self._encode_slots(u, tt, n_active, runs)
            if out is not None:
                return out
        flat = self.embeddings.view(-1, self.level_dim)
        return self._encode(u, flat, n_active, time=(tt, self.time_grid_size, self.entries_per_grid))

    def _encode_slots(
        self, u: Tensor, tt: Tensor, n_active: int, runs: TimeRuns | None = None
    ) -> Tensor | None:
        """Few distinct times (a clip's frames): blend one table per time, then read one grid per point.

        ``f(x, t) = Σ_c w_c·((1−a)·W_lo[c] + a·W_hi[c])``: blending the two time grids per distinct
        time first (``launch.encode_slots``) gives the same features with half the random reads and
        reductions per point. Used with the Triton pair layout when ``kernel_options.slot_blend`` is on
        and the points come in at most ``slot_max_times`` runs of equal time (the renderer emits
        frame-major points) with at least ``slot_min_points_per_time`` points per run on average;
        otherwise returns None. Finding the runs synchronises with the GPU once per call, unless ``runs``
        gives them from the host (then the distinct times share one slot each, and nothing is read back).
        """
        opts = self.kernel_options
        if not opts.slot_blend or resolve_backend(self.backend, u.device) != "triton":
            return None
        plan = self.slot_plan(tt, runs, u.shape[0])
        if plan is None:
            return None
        slot, lo, hi, a = plan
        return launch.encode_slots(
            u, self.embeddings.view(-1, self.level_dim), slot, lo, hi, a, self.bufs, n_active, self.num_levels,
            self.cfg.interpolation, self.time_grid_size, self.entries_per_grid, opts, self.launch_state,
        )  # fmt: skip

    def slot_plan(
        self, tt: Tensor, runs: TimeRuns | None, n_eval: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """The clip slots of points with times ``tt [N]``: ``(slot [N], lo [K], hi [K], a [K])`` on ``tt``'s
        device (slot ``k`` blends ``a_k·W[hi_k] + (1−a_k)·W[lo_k]``), or None when the slot path does not pay:
        fewer than ``slot_min_points_per_time`` of the ``n_eval`` grid evaluations per distinct time, more
        than ``slot_max_times`` times, or a table the pair layout does not cover (see :meth:`_encode_slots`)."""
        opts = self.kernel_options
        n = tt.shape[0]
        if self.time_grid_size < 2 or n_eval < opts.slot_min_points_per_time:
            return None
        if not launch.pairs_supported(self.embeddings, self.level_dim, self.bufs, opts):
            return None
        if runs is not None and runs.total == n:
            runs = runs.nonempty()
            times, run_slot = torch.unique(runs.times.float().clamp(0.0, 1.0), return_inverse=True)
            k = int(times.numel())
            if k > opts.slot_max_times or n_eval < k * opts.slot_min_points_per_time:
                return None
            slot = expand_runs(run_slot, runs.counts, tt.device)
        else:
            times, slot = torch.unique_consecutive(tt, return_inverse=True)
            k = int(times.numel())
            if k > opts.slot_max_times or n_eval < k * opts.slot_min_points_per_time:
                return None
        g32 = (times * float(self.time_grid_size - 1)).float()  # the kernels' fp32 product (on either device)
        lo = torch.floor(g32).long()
        hi = torch.ceil(g32).long()
        a = (g32 - torch.floor(g32)).float()
        if lo.device != tt.device:
            lo, hi, a = (to_device(v, tt.device) for v in (lo, hi, a))
        return slot, lo, hi, a

    def grid_features(self, x: Tensor, index: int, max_level: int | None = None) -> Tensor:
        """Features ``[N, L·C]`` of time grid ``index`` alone (``f_index(x)``).

        Runs the plain Triton kernels, as measured for the points-form time TV (BENCHMARKS.md §2).
        """
        plain = dataclasses.replace(self.kernel_options, pair_layout=False)
        u = _unit_coords(x, self.bound)
        return self._encode(u, self.embeddings[index], self._active_levels(max_level), options=plain)

    def time_tv_loss(
        self, mode: TimeTVMode, *, n_points: int | None = None, generator: torch.Generator | None = None,
        chunk: int = 8, fused: bool = True,
    ) -> Tensor:  # fmt: skip
        """Time total variation between neighbouring grids, a scalar (SPEC 3.6, 11.16).

        ``mode="points"`` is SPEC 3.6 and what upstream runs (``network_4dgrid.py:TV_loss`` since its
        "refactor tv loss" commit): ``n_points`` points ``x`` drawn uniformly in ``[-bound, bound]^3`` on
        every call and ``Σ_{i=0}^{T-2} mean_x ‖f_i(x) − f_{i+1}(x)‖² / ((T−1)·L)`` with ``f_i`` the
        ``L·C`` features of grid ``i`` and ``L`` the number of levels (upstream: ``63·16`` for 64 grids of
        16 levels). Each grid is evaluated once (``T`` encoder calls, not ``2(T−1)``).

        ``mode="table"`` is upstream's form before that commit, on the table entries instead of features:
        ``Σ_i mean_e ‖W_i[e] − W_{i+1}[e]‖² / ((T−1)·L)`` over the ``E`` rows of each grid; chunked over
        ``chunk`` grids, no encoder call, no random points (``n_points`` is ignored).

        ``fused`` (points form): one autograd node writes every grid's gradient into its slice of one table
        gradient (:class:`~.timetv.PointsTimeTV`; same loss, same gradient up to fp32 summation order);
        ``False`` is the plain per-slice form, kept as the reference.
        """
        t_size = self.time_grid_size
        if mode not in ("points", "table"):
            raise ConfigError(f"unknown time TV mode {mode!r}", "use 'points' or 'table'")
        if mode == "points" and (n_points is None or n_points < 1):
            raise ConfigError(f"time TV points mode needs n_points >= 1, got {n_points}")
        if t_size < 2:
            return self.embeddings.new_zeros(())
        if mode == "table":
            return TableTimeTV.apply(self.embeddings, self.num_levels, chunk)
        dev = self.embeddings.device
        gdev = generator.device if generator is not None else dev  # a CPU generator is fine on any device
        x = (to_device(torch.rand(n_points, 3, generator=generator, device=gdev), dev) * 2 - 1) * self.bound
        if fused and self._tv_batched():
            replay = self._tv_replay if self.kernel_options.tv_cuda_graph else None
            return BatchedPointsTimeTV.apply(
                self.embeddings,
                _unit_coords(x, self.bound),
                self._encode_grids,
                self.num_levels,
                self.kernel_options.tv_grids_per_call,
                torch.is_grad_enabled(),
                replay,
            )
        if fused:
            plain = dataclasses.replace(self.kernel_options, pair_layout=False)
            u = _unit_coords(x, self.bound)

            def encode(uu: Tensor, table: Tensor) -> Tensor:
                return self._encode(uu, table, self.num_levels, options=plain)

            return PointsTimeTV.apply(self.embeddings, u, encode, self.num_levels)
        total = self.embeddings.new_zeros((), dtype=torch.float32)
        prev = self.grid_features(x, 0)
        for i in range(1, t_size):
            cur = self.grid_features(x, i)
            total = total + (prev - cur).square().sum(-1).mean()
            prev = cur
        return total / ((t_size - 1) * self.num_levels)

    def _tv_replay(self, u: Tensor) -> tuple[Tensor, Tensor] | None:
        """The batched time TV's one pass on this encoder's table from its CUDA graph
        (``KernelOptions.tv_cuda_graph``, :mod:`.tvgraph`), or None where the graph does not apply."""
        if self._tv_graph is None:
            self._tv_graph = TVGraph()
        per_call, table = self.kernel_options.tv_grids_per_call, self.embeddings

        def compute(points: Tensor) -> tuple[Tensor, Tensor | None]:
            return batched_tv_pass(table, points, self._encode_grids, self.num_levels, per_call, True)

        return self._tv_graph(u, table, (self.kernel_options,), compute)

    def _tv_batched(self) -> bool:
        """The points-form time TV encodes several grids per call (:class:`~.timetv.BatchedPointsTimeTV`): with the
        Triton kernels and a table the pair layout covers (the clip path's slot kernels), and ``tv_batched``."""
        opts = self.kernel_options
        return (
            opts.tv_batched
            and resolve_backend(self.backend, self.embeddings.device) == "triton"
            and launch.pairs_supported(self.embeddings, self.level_dim, self.bufs, opts)
        )

    def _encode_grids(self, u: Tensor, tables: Tensor) -> Tensor:
        """``[K, N, L·C]`` features of the ``K`` grids ``tables [K, E, C]`` (consecutive slices of the stacked
        table, or a leaf copy of them) at the same points ``u [N, 3]``, in one slot-path call: slot ``k`` is grid
        ``k`` with blend weight 0 (``0·W_k + 1·W_k = W_k`` exactly), so each point reads its grid's table."""
        k, n = tables.shape[0], u.shape[0]
        grids = torch.arange(k, device=u.device)
        out = launch.encode_slots(
            u.repeat(k, 1), tables.reshape(-1, self.level_dim), grids.repeat_interleave(n), grids, grids,
            torch.zeros(k, device=u.device), self.bufs, self.num_levels, self.num_levels, self.cfg.interpolation, k,
            self.entries_per_grid, self.kernel_options, self.launch_state,
        )  # fmt: skip
        return out.view(k, n, -1)

    def extra_repr(self) -> str:
        return (
            f"T={self.time_grid_size}, {self.cfg.grid_type}, L={self.num_levels}, C={self.level_dim}, "
            f"entries/grid={self.entries_per_grid}, backend={self.backend}"
        )


def make_grid_encoding(
    cfg: GridEncodingConfig,
    *,
    backend: Backend,
    bound: float = 1.0,
    kernel_options: KernelOptions | None = None,
) -> nn.Module:
    """A static grid encoder for ``backend``; ``tcnn`` gives :class:`TcnnGridEncoding` (own layout)."""
    if backend == "tcnn":
        return TcnnGridEncoding(cfg, bound)
    return GridEncoding(cfg, backend=backend, bound=bound, kernel_options=kernel_options)
