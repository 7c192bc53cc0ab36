"""Static and 4D radiance fields (SPEC 3.1 ``dnerf/network_4dgrid.py``, ``backbone grid4d``).

A field maps points (and times) to density and albedo; it knows nothing about cameras (DESIGN.md).

* features ``h = grid(x[, t])`` (32-d), coarse-to-fine masking zeroes levels ``>= max_level``;
* decoder MLP 32→64→4 with ReLU and biases; channel 0 is the density logit, 1..3 the albedo logits;
* ``σ = trunc_exp(h₀ + blob(x))`` with ``blob = 10·exp(−‖x‖²/(2·0.2²))`` (no gradient through the blob);
* ``albedo = sigmoid(h₁..₃)``;
* normals by central finite differences of σ (ε = 0.01, positions clamped to ``[−bound, bound]``),
  ``n = −∇σ/‖∇σ‖``, NaN → 0; the 6 offsets are evaluated in one batched field call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from animate124.errors import ConfigError
from animate124.scene.activations import trunc_exp
from animate124.scene.grid import (
    Backend,
    GridEncoding,
    GridEncodingConfig,
    KernelOptions,
    TimeGridEncoding,
    TimeTVMode,
    broadcast_time,
    make_grid_encoding,
    resolve_backend,
    stencil_normals,
    stencil_supported,
)
from animate124.scene.timeruns import TimeRuns

logger = logging.getLogger(__name__)


@dataclass
class FieldOutput:
    """Per-point field values: ``sigma [N]`` float32 (≥ 0), ``albedo [N,3]`` float32 in [0,1]."""

    sigma: Tensor
    albedo: Tensor


def safe_normalize(v: Tensor, eps: float = 1e-20) -> Tensor:
    """``v / sqrt(max(‖v‖², eps))`` along the last axis (upstream ``safe_normalize``): 0 stays 0."""
    return v / torch.sqrt(torch.clamp((v * v).sum(-1, keepdim=True), min=eps))


class DecoderMLP(nn.Module):
    """Plain MLP ``in → hidden (×(num_layers−1)) → out`` with ReLU between layers and biases."""

    def __init__(self, dim_in: int, dim_out: int, *, hidden_dim: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"num_layers must be >= 1, got {num_layers}")
        dims = [dim_in] + [hidden_dim] * (num_layers - 1) + [dim_out]
        self.net = nn.ModuleList(nn.Linear(a, b, bias=True) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, h: Tensor) -> Tensor:
        """``[N, dim_in] -> [N, dim_out]``."""
        for i, layer in enumerate(self.net):
            h = layer(h)
            if i < len(self.net) - 1:
                h = F.relu(h, inplace=True)
        return h


class RadianceField(nn.Module):
    """Shared decoder, density, normals and optimizer groups; subclasses provide :meth:`features`.

    Attributes: ``bound`` (scene is ``[−bound, bound]^3``), ``dynamic``, ``encoder``, ``sigma_net``;
    ``accepts_time_runs``: ``forward``/``density``/``normals`` take ``runs=`` (the renderer checks it).
    """

    dynamic: bool = False
    accepts_time_runs: bool = True

    def __init__(
        self,
        encoder: nn.Module,
        *,
        hidden_dim: int,
        num_layers: int,
        blob_density: float,
        blob_radius: float,
        bound: float = 1.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.bound = float(bound)
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.blob_density = float(blob_density)
        self.blob_radius = float(blob_radius)
        self.sigma_net = DecoderMLP(encoder.output_dim, 4, hidden_dim=hidden_dim, num_layers=num_layers)
        self.max_level: int | None = None

    # -- to be provided by subclasses ------------------------------------------------------------
    def features(self, x: Tensor, t: Tensor | None, runs: TimeRuns | None = None) -> Tensor:
        """Grid features ``[N, L·C]`` (levels ``>= self.max_level`` zero); ``runs``: the points' times as
        host-side runs (:mod:`animate124.scene.timeruns`), used by 4D fields."""
        raise NotImplementedError

    # -- field -------------------------------------------------------------------------------------
    @torch.no_grad()
    def density_blob(self, x: Tensor) -> Tensor:
        """``blob_density·exp(−‖x‖²/(2·blob_radius²))``, ``[N]``, no gradient (SPEC 3.1)."""
        d = (x.float() ** 2).sum(-1)
        return self.blob_density * torch.exp(-d / (2 * self.blob_radius**2))

    def _decode(self, x: Tensor, t: Tensor | None, runs: TimeRuns | None = None) -> tuple[Tensor, Tensor]:
        h = self.sigma_net(self.features(x, t, runs))
        sigma = trunc_exp(h[..., 0].float() + self.density_blob(x))
        return sigma, h

    def forward(self, x: Tensor, t: Tensor | None = None, runs: TimeRuns | None = None) -> FieldOutput:
        """``x [N,3]`` in ``[−bound, bound]``, ``t [N,1]`` in [0,1] (ignored if static) -> FieldOutput."""
        sigma, h = self._decode(x, t, runs)
        albedo = torch.sigmoid(h[..., 1:].float())
        return FieldOutput(sigma=sigma, albedo=albedo)

    def density(self, x: Tensor, t: Tensor | None = None, runs: TimeRuns | None = None) -> Tensor:
        """``σ [N]`` float32."""
        return self._decode(x, t, runs)[0]

    def normals(
        self, x: Tensor, t: Tensor | None = None, eps: float = 0.01, runs: TimeRuns | None = None
    ) -> Tensor:
        """Unit normals ``[N,3]`` from central differences of σ (SPEC 3.1), differentiable w.r.t. params.

        ``∇σ ≈ (σ(x+εe_k) − σ(x−εe_k)) / (2ε)`` with the shifted points clamped to the box;
        ``n = −∇σ/‖∇σ‖`` (safe: zero gradient gives 0), NaN → 0. One field call on ``6N`` points.
        """
        fused = self._stencil_normals(x, t, eps, runs)
        if fused is not None:
            return fused
        n = x.shape[0]
        offs = torch.eye(3, device=x.device, dtype=x.dtype) * eps
        offs = torch.cat([offs, -offs], dim=0)  # [6,3]: +x,+y,+z,−x,−y,−z
        xs = (x.unsqueeze(0) + offs[:, None, :]).clamp(-self.bound, self.bound).reshape(6 * n, 3)
        ts = None
        if t is not None and self.dynamic:
            ts = broadcast_time(t, n).repeat(6, 1)
        kw = {} if runs is None else {"runs": runs.repeat(6)}
        s = self.density(xs, ts, **kw).reshape(6, n)
        grad = 0.5 * (s[:3] - s[3:]) / eps  # [3, N]
        normal = safe_normalize(-grad.t())
        return torch.nan_to_num(normal)

    def fused_normals_ready(self, x: Tensor, t: Tensor | None = None, runs: TimeRuns | None = None) -> bool:
        """Whether :meth:`normals` runs the fused stencil kernel for these points (``KernelOptions.fused_normals``
        on a Triton encoder it covers): then it keeps no activations, so callers need no checkpoint."""
        return self._stencil_plan(x, t, runs) is not None

    def _stencil_plan(self, x: Tensor, t: Tensor | None, runs: TimeRuns | None) -> dict | None:
        """Arguments of :func:`~animate124.scene.grid.stencil_normals`, or None where it does not apply."""
        enc = self.encoder
        opts = getattr(enc, "kernel_options", None)
        if opts is None or not opts.fused_normals or self.num_layers != 2 or x.dim() != 2 or x.shape[0] == 0:
            return None
        if (
            not isinstance(enc, GridEncoding | TimeGridEncoding)
            or resolve_backend(enc.backend, x.device) != "triton"
        ):
            return None
        table = enc.embeddings.view(-1, enc.level_dim)
        if not stencil_supported(table, enc.level_dim, enc.bufs, opts, self.hidden_dim):
            return None
        plan: dict = {"slots": None, "time_grid_size": 1, "table": table}
        if isinstance(enc, TimeGridEncoding):
            if t is None or not self.dynamic:
                t, runs = x.new_zeros(1, 1), None
            tt = broadcast_time(t, x.shape[0]).float().clamp(0.0, 1.0).reshape(-1).contiguous()
            slots = enc.slot_plan(tt, runs, 6 * x.shape[0])
            if slots is None:
                return None
            plan.update(slots=slots, time_grid_size=enc.time_grid_size)
        return plan

    def _stencil_normals(
        self, x: Tensor, t: Tensor | None, eps: float, runs: TimeRuns | None
    ) -> Tensor | None:
        plan = self._stencil_plan(x, t, runs)
        if plan is None:
            return None
        enc = self.encoder
        l1, l2 = self.sigma_net.net
        return stencil_normals(
            x, plan["table"], l1.weight, l1.bias, l2.weight, l2.bias, bufs=enc.bufs,
            n_active=enc._active_levels(self.max_level), interpolation=enc.cfg.interpolation, eps=eps,
            bound=enc.bound, blob_density=self.blob_density, blob_radius=self.blob_radius,
            options=enc.kernel_options, state=enc.launch_state, slots=plan["slots"],
            time_grid_size=plan["time_grid_size"],
        )  # fmt: skip

    def set_level_mask(self, max_level: int | None) -> None:
        """Coarse-to-fine: levels ``>= max_level`` give zero features; ``None`` disables masking.

        SPEC 3.1: static stage with global step ≤ 3000 uses ``max_level = 16 − 8 = 8``.
        """
        if max_level is not None and max_level < 0:
            raise ConfigError(f"max_level must be >= 0 or None, got {max_level}")
        self.max_level = max_level

    def param_groups(self, lr: float, encoder_scale: float = 10.0, sigma_scale: float = 1.0) -> list[dict]:
        """Adam groups (SPEC 3.9): grids at ``lr·encoder_scale``, the MLP at ``lr·sigma_scale``."""
        return [
            {"params": list(self.encoder.parameters()), "lr": lr * encoder_scale, "name": "encoder"},
            {"params": list(self.sigma_net.parameters()), "lr": lr * sigma_scale, "name": "sigma_net"},
        ]


class StaticField(RadianceField):
    """Static NeRF of the static stage: one spatial grid (SPEC 3.1, ``dynamic=False``).

    Every hyperparameter with a config field is a required argument (the schema holds the defaults).
    """

    dynamic = False

    def __init__(
        self,
        encoding_cfg: GridEncodingConfig,
        *,
        hidden_dim: int,
        num_layers: int,
        blob_density: float,
        blob_radius: float,
        backend: Backend,
        bound: float = 1.0,
        kernel_options: KernelOptions | None = None,
    ) -> None:
        encoder = make_grid_encoding(
            encoding_cfg, backend=backend, bound=bound, kernel_options=kernel_options
        )
        super().__init__(
            encoder,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            blob_density=blob_density,
            blob_radius=blob_radius,
            bound=bound,
        )
        self.encoding_cfg = encoding_cfg
        self.backend = backend

    def features(self, x: Tensor, t: Tensor | None, runs: TimeRuns | None = None) -> Tensor:
        return self.encoder(x, max_level=self.max_level)


class DynamicField(RadianceField):
    """4D NeRF: ``time_grid_size`` grids stacked in one parameter, shared MLP (SPEC 3.1 "Time").

    No deformation field (upstream's is always zero). ``t=None`` means ``t=0`` (as upstream).
    """

    dynamic = True

    def __init__(
        self,
        encoding_cfg: GridEncodingConfig,
        *,
        time_grid_size: int,
        hidden_dim: int,
        num_layers: int,
        blob_density: float,
        blob_radius: float,
        backend: Backend,
        bound: float = 1.0,
        kernel_options: KernelOptions | None = None,
    ) -> None:
        if backend == "tcnn":
            raise ConfigError(
                "the time-stacked grid has no tcnn backend", "use backend 'auto', 'triton' or 'torch'"
            )
        encoder = TimeGridEncoding(
            encoding_cfg,
            time_grid_size=time_grid_size,
            backend=backend,
            bound=bound,
            kernel_options=kernel_options,
        )
        self._init_with_encoder(encoder, hidden_dim, num_layers, blob_density, blob_radius)

    def _init_with_encoder(
        self,
        encoder: TimeGridEncoding,
        hidden_dim: int,
        num_layers: int,
        blob_density: float,
        blob_radius: float,
    ) -> None:
        RadianceField.__init__(
            self,
            encoder,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            blob_density=blob_density,
            blob_radius=blob_radius,
            bound=encoder.bound,
        )
        self.encoding_cfg = encoder.cfg
        self.time_grid_size = encoder.time_grid_size
        self.backend = encoder.backend

    def features(self, x: Tensor, t: Tensor | None, runs: TimeRuns | None = None) -> Tensor:
        if t is None:
            t = x.new_zeros(1, 1)
            runs = None
        return self.encoder(x, t, max_level=self.max_level, runs=runs)

    def time_tv_loss(
        self,
        mode: TimeTVMode,
        *,
        n_points: int | None = None,
        generator: torch.Generator | None = None,
        fused: bool = True,
    ) -> Tensor:
        """Time TV between neighbouring grids (SPEC 3.6); see :meth:`TimeGridEncoding.time_tv_loss`.

        ``mode`` has no default: the config's ``loss.time_tv_mode`` chooses (``"points"`` is SPEC 3.6);
        ``n_points`` (``loss.time_tv_points``) is required by the points form.
        """
        return self.encoder.time_tv_loss(mode, n_points=n_points, generator=generator, fused=fused)

    @classmethod
    def from_static(
        cls, static: StaticField, *, time_grid_size: int, backend: Backend | None = None
    ) -> DynamicField:
        """4D field that renders exactly ``static`` at every t (SPEC 3.1 ``from_pretrained_3d``).

        The time encoder is :meth:`TimeGridEncoding.from_static` of the static encoder (every time grid
        receives a copy of the static table); the MLP is copied verbatim; the level mask is carried over.
        Exact at grid times; between grids ``f·w + f·(1−w)`` may differ from ``f`` by fp32 rounding only.
        """
        if not isinstance(static.encoder, GridEncoding):
            raise ConfigError(
                "from_static needs a static field with the torch-ngp table layout",
                "tcnn static fields cannot be converted; train the static stage with backend auto/triton/torch",
            )
        encoder = TimeGridEncoding.from_static(static.encoder, time_grid_size=time_grid_size, backend=backend)
        field = cls.__new__(cls)
        field._init_with_encoder(
            encoder, static.hidden_dim, static.num_layers, static.blob_density, static.blob_radius
        )
        field.sigma_net.to(device=static.encoder.embeddings.device)
        field.sigma_net.load_state_dict(static.sigma_net.state_dict())
        field.max_level = static.max_level
        return field
