"""Grid and field hyperparameters for tests: the library has no defaults for them (the config schema has).

``paper_grid_config()`` is SPEC 3.1's "tiledgrid"; ``PAPER_MLP`` the decoder and density blob of SPEC 3.1.
Tests pass them (with overrides) explicitly instead of relying on library defaults.
"""

from __future__ import annotations

from animate124.scene.grid import GridEncodingConfig

PAPER_GRID = {
    "grid_type": "tiled",
    "num_levels": 16,
    "level_dim": 2,
    "base_resolution": 16,
    "desired_resolution": 2048,
    "log2_table_size": 16,
}
# SPEC 3.1's unused ``hashgrid`` option (hashed, 2^19 tables; upstream uses smoothstep, we keep linear)
HASH_GRID = {**PAPER_GRID, "grid_type": "hash", "log2_table_size": 19}
PAPER_MLP = {"hidden_dim": 64, "num_layers": 2, "blob_density": 10.0, "blob_radius": 0.2}
PAPER_TIME_GRIDS = 64


def paper_grid_config(**overrides: object) -> GridEncodingConfig:
    """SPEC 3.1 grid (tiled, 16 levels × 2, base 16, desired 2048, 2^16 tables) with ``overrides``."""
    return GridEncodingConfig(**{**PAPER_GRID, **overrides})  # type: ignore[arg-type]


def hash_grid_config(**overrides: object) -> GridEncodingConfig:
    """The hashed 2^19 variant of the paper grid with ``overrides``."""
    return GridEncodingConfig(**{**HASH_GRID, **overrides})  # type: ignore[arg-type]


def small_grid_config(**overrides: object) -> GridEncodingConfig:
    """A 4-level grid small enough for CPU tests (base 4, desired 32, 2^9 tables)."""
    base = {"num_levels": 4, "base_resolution": 4, "desired_resolution": 32, "log2_table_size": 9}
    return paper_grid_config(**{**base, **overrides})


def field_kwargs(**overrides: object) -> dict:
    """Keyword arguments of ``StaticField``/``DynamicField`` besides the grid: SPEC 3.1 MLP and blob."""
    return {**PAPER_MLP, **overrides}


def render_clip_on_off(on, off, measure=None) -> dict:
    """The same 2-frame 3×3 clip (lambertian at ambient 0.3, normals, checkpointed live normals, a fixed
    perturbation) rendered with two fields that hold the same parameters under two kernel options, each with
    the backward of ``mean(rgb) + mean(orientation) + mean(normal)``: per name, ``(rgb, normal image, {parameter:
    gradient}, measure(field) or None, samples)``. ``measure`` is a context manager factory wrapping each
    render (``with measure(f) as m``; its value ends up in the 4th slot), e.g. a counter of kernel launches."""
    import contextlib

    import torch

    from animate124.render.cameras import orbit_cameras
    from animate124.render.renderer import render

    cams, times = orbit_cameras(2, height=3, width=3), torch.tensor([[0.2, 0.7]])
    res = {}
    for name, f in (("on", on), ("off", off)):
        f.zero_grad(set_to_none=True)
        with measure(f) if measure is not None else contextlib.nullcontext() as m:
            r = render(
                f, cams, times, shading="lambertian", ambient=0.3, compute_normals=True, max_steps=12,
                perturb=True, generator=torch.Generator().manual_seed(0), checkpoint_normals=True,
                live_normals=True,
            )  # fmt: skip
            (r.rgb.mean() + r.orientation.mean() + r.normal.mean()).backward()
        grads = {n: p.grad.detach().clone() for n, p in f.named_parameters() if p.grad is not None}
        res[name] = (r.rgb.detach(), r.normal.detach(), grads, m() if callable(m) else m, r.num_samples)
    return res
