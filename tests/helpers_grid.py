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
