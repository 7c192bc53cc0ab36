"""Grid encoding (SPEC 3.1): layout numbers, index formulas, reference encoder vs a scalar port."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers_grid import PAPER_GRID, hash_grid_config, paper_grid_config

from animate124.errors import ConfigError
from animate124.scene.grid import (
    GridEncoding,
    GridEncodingConfig,
    TimeGridEncoding,
    grid_layout,
    level_index,
    make_grid_encoding,
)

SPEC_RESOLUTIONS = [16, 23, 31, 43, 59, 81, 112, 154, 213, 295, 407, 562, 777, 1073, 1483, 2048]
M32 = 0xFFFFFFFF


# ---------------------------------------------------------------- independent scalar implementation
def scalar_encode(
    cfg: GridEncodingConfig, table: np.ndarray, point: np.ndarray, bound: float = 1.0
) -> np.ndarray:
    """Literal port of torch-ngp ``kernel_grid`` for one point (python ints, float32 maths)."""
    L, C = cfg.num_levels, cfg.level_dim
    out = np.zeros(L * C, dtype=np.float64)
    u = ((point.astype(np.float32) + np.float32(bound)) / np.float32(2 * bound)).astype(np.float32)
    if (u < 0).any() or (u > 1).any():
        return out
    b = np.exp2(np.log2(cfg.desired_resolution * bound / cfg.base_resolution) / (L - 1))
    S = np.float32(np.log2(b))
    cap = 2**cfg.log2_table_size
    offset = 0
    for lv in range(L):
        res_py = math.ceil(cfg.base_resolution * b**lv)
        size = math.ceil(min(cap, (res_py + 1) ** 3) / 8) * 8
        scale = np.float32(np.exp2(np.float32(lv) * S) * np.float32(cfg.base_resolution)) - np.float32(1)
        resolution = math.ceil(scale) + 1
        pos = u * scale + np.float32(0.5)
        pg = np.floor(pos)
        frac = (pos - pg).astype(np.float64)
        pg = pg.astype(np.int64)
        acc = np.zeros(C)
        for corner in range(8):
            w = 1.0
            local = []
            for d in range(3):
                if corner & (1 << d):
                    w *= frac[d]
                    local.append(int(pg[d]) + 1)
                else:
                    w *= 1 - frac[d]
                    local.append(int(pg[d]))
            # get_grid_index (gridencoder.cu): guarded stride loop, hash only if the loop overflowed
            stride, index = 1, 0
            for d in range(3):
                if cfg.stride_guard and stride > size:
                    break
                index += local[d] * stride
                stride *= resolution + 1
            if cfg.grid_type == "hash" and stride > size:
                index = 0
                for d, prime in enumerate((1, 2654435761, 805459861)):
                    index ^= (local[d] * prime) & M32
            index = (index & M32) % size
            acc += w * table[offset + index].astype(np.float64)
        out[lv * C : (lv + 1) * C] = acc
        offset += size
    return out


# ---------------------------------------------------------------- layout
def test_paper_layout_matches_spec():
    lay = grid_layout(paper_grid_config())
    assert lay.per_level_scale == pytest.approx(1.3819, abs=1e-4)
    assert [lv.resolution for lv in lay.levels] == SPEC_RESOLUTIONS
    sizes = [lv.table_size for lv in lay.levels]
    assert sizes[:3] == [4920, 13824, 32768]
    assert sizes[3:] == [65536] * 13
    assert lay.total_entries == 903_480
    assert lay.offsets[:4] == [0, 4920, 4920 + 13824, 4920 + 13824 + 32768]
    enc = GridEncoding(paper_grid_config(), backend="torch")
    assert tuple(enc.embeddings.shape) == (903_480, 2)
    assert enc.embeddings.numel() == 1_806_960
    assert enc.offsets.tolist() == lay.offsets
    assert enc.embeddings.abs().max() <= 1e-4  # U(-1e-4, 1e-4)
    # dense levels never wrap; wrapped ones are the 13 capped levels
    assert [lv.wraps for lv in lay.levels] == [False] * 3 + [True] * 13
    # stride guard: (R+1)^2 > 65536 from level 9 on, so z is dropped there
    assert [lv.strides[2] == 0 for lv in lay.levels] == [False] * 9 + [True] * 7


def test_hashgrid_layout():
    lay = grid_layout(hash_grid_config())
    assert all(lv.table_size <= 2**19 for lv in lay.levels)
    # hashed exactly where the dense grid exceeds 2^19 entries: (R+1)^3 > 524288 <=> R+1 >= 81
    assert [lv.hashed for lv in lay.levels] == [(lv.resolution + 1) ** 3 > 2**19 for lv in lay.levels]
    assert lay.levels[5].hashed and not lay.levels[4].hashed


def test_bound_scales_desired_resolution():
    lay = grid_layout(paper_grid_config(), bound=2.0)
    assert lay.levels[-1].resolution == 4096


# ---------------------------------------------------------------- index formulas by hand
def test_tiled_index_by_hand():
    lay = grid_layout(paper_grid_config())
    c = lambda *v: torch.tensor(v)  # noqa: E731
    # level 0: strides 1, 17, 289, dense (4,920 rows)
    assert level_index(lay, 0, c(16, 16, 16)).item() == 16 + 16 * 17 + 16 * 289  # 4912
    # level 3: R=43 -> strides 1, 44, 1936; 43 + 43·44 + 43·1936 = 85183 -> mod 65536 = 19647
    assert level_index(lay, 3, c(43, 43, 43)).item() == 19647
    # level 9: R=295 -> 296² = 87616 > 65536: z dropped, x + 296·y
    assert level_index(lay, 9, c(5, 7, 100)).item() == 5 + 7 * 296
    assert level_index(lay, 9, c(5, 7, 0)).item() == level_index(lay, 9, c(5, 7, 100)).item()
    # level 15: x + 2049·y wraps: 10 + 2049·40 = 81970 -> 16434
    assert level_index(lay, 15, c(10, 40, 3)).item() == 81970 - 65536
    full = grid_layout(paper_grid_config(stride_guard=False))
    # without the guard: 5 + 296·7 + 296²·100 = 8_763_677 mod 65536
    assert level_index(full, 9, c(5, 7, 100)).item() == (5 + 296 * 7 + 296 * 296 * 100) % 65536


def test_hash_index_by_hand():
    lay = grid_layout(hash_grid_config())
    # 3 ^ (5·2654435761 mod 2^32 = 387276917) ^ (7·805459861 mod 2^32 = 1343251731) = 1191511397
    assert level_index(lay, 5, torch.tensor([3, 5, 7])).item() == 1191511397 % 2**19 == 329061
    # dense levels of the hash grid still use the tiled index
    assert level_index(lay, 0, torch.tensor([1, 2, 3])).item() == 1 + 2 * 17 + 3 * 289


# ---------------------------------------------------------------- reference encoder
def _random_table(enc: GridEncoding, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        enc.embeddings.copy_(torch.rand(enc.embeddings.shape, generator=g) * 2 - 1)
    return enc.embeddings.detach().numpy()


@pytest.mark.parametrize(
    "cfg",
    [paper_grid_config(), hash_grid_config(), paper_grid_config(stride_guard=False)],
    ids=["tiled", "hash19", "tiled-noguard"],
)
def test_reference_matches_scalar_port(cfg):
    enc = GridEncoding(cfg, backend="torch")
    table = _random_table(enc)
    pts = np.array(
        [
            [0.1234, -0.5678, 0.9012],
            [-0.999, 0.999, 0.0],
            [0.3, 0.3, -0.71],
            [1.0, -1.0, 0.25],
            [0.0, 0.0, 0.0],
        ],
        dtype=np.float32,
    )
    out = enc(torch.from_numpy(pts)).detach().numpy()
    for i, p in enumerate(pts):
        np.testing.assert_allclose(out[i], scalar_encode(cfg, table, p), atol=2e-6, rtol=0)


def test_reference_gradient_is_weight_scatter():
    cfg = paper_grid_config(num_levels=4, base_resolution=4, desired_resolution=32, log2_table_size=8)
    enc = GridEncoding(cfg, backend="torch")
    _random_table(enc)
    x = torch.tensor([[0.2, -0.4, 0.6], [-0.3, 0.1, 0.05]])
    g = torch.randn(2, cfg.output_dim, generator=torch.Generator().manual_seed(1))
    (enc(x) * g).sum().backward()
    # d out[i, l*C+c] / d table[e, c] equals the weight of e; probe with one-hot tables
    expected = torch.zeros_like(enc.embeddings)
    eye_rows = {}
    with torch.no_grad():
        for e in range(enc.embeddings.shape[0]):
            probe = torch.zeros_like(enc.embeddings)
            probe[e] = 1.0
            eye_rows[e] = enc.encode_with_table((x + 1) / 2, probe)  # [2, L*C], weights of row e
        for e, w in eye_rows.items():
            expected[e] = (w * g).reshape(2, cfg.num_levels, cfg.level_dim).sum((0, 1))
    torch.testing.assert_close(enc.embeddings.grad, expected, atol=1e-6, rtol=1e-5)
    assert expected.abs().sum() > 0


def test_outside_unit_cube_is_zero_and_boundary_is_not():
    enc = GridEncoding(paper_grid_config(), backend="torch")
    _random_table(enc)
    x = torch.tensor(
        [[1.0001, 0.0, 0.0], [0.0, -1.01, 0.0], [0.2, 0.3, 3.0], [1.0, -1.0, 1.0], [0.5, 0.5, 0.5]]
    )
    out = enc(x)
    assert torch.all(out[:3] == 0)
    assert torch.all(out[3:].abs().sum(-1) > 0)


def test_level_mask_zeroes_upper_levels():
    cfg = paper_grid_config(num_levels=6, base_resolution=4, desired_resolution=64, log2_table_size=10)
    enc = GridEncoding(cfg, backend="torch")
    _random_table(enc)
    x = torch.rand(50, 3) * 2 - 1
    full = enc(x)
    masked = enc(x, max_level=3)
    assert torch.equal(masked[:, :6], full[:, :6])
    assert torch.all(masked[:, 6:] == 0)
    assert torch.all(enc(x, max_level=0) == 0)
    assert torch.equal(enc(x, max_level=99), full)


def test_config_has_no_hyperparameter_defaults_and_validates():
    with pytest.raises(TypeError):
        GridEncodingConfig()  # type: ignore[call-arg]  # the schema holds the defaults
    for name in PAPER_GRID:
        partial = {k: v for k, v in PAPER_GRID.items() if k != name}
        with pytest.raises(TypeError):
            GridEncodingConfig(**partial)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="desired_resolution must be an int"):
        paper_grid_config(desired_resolution=2048.0)
    with pytest.raises(ConfigError, match="num_levels must be an int"):
        paper_grid_config(num_levels=True)
    for log2 in (3, 25):
        with pytest.raises(ConfigError, match="out of range"):
            paper_grid_config(log2_table_size=log2)
    assert paper_grid_config(log2_table_size=4).log2_table_size == 4
    assert paper_grid_config(log2_table_size=24).log2_table_size == 24
    with pytest.raises(ConfigError):
        paper_grid_config(num_levels=1)
    with pytest.raises(ConfigError):
        paper_grid_config(level_dim=3)
    with pytest.raises(TypeError):
        GridEncoding(paper_grid_config())  # type: ignore[call-arg]  # backend is a config field too


def test_config_validation_and_tcnn_error():
    with pytest.raises(ConfigError):
        paper_grid_config(grid_type="dense")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        paper_grid_config(interpolation="cubic")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        GridEncoding(paper_grid_config(), backend="tcnn")
    try:
        import tinycudann  # noqa: F401
    except Exception:
        with pytest.raises(ConfigError, match="tinycudann"):
            make_grid_encoding(paper_grid_config(), backend="tcnn")


def test_smoothstep_weights():
    cfg = paper_grid_config(num_levels=2, base_resolution=4, desired_resolution=8, interpolation="smoothstep")
    enc = GridEncoding(cfg, backend="torch")
    with torch.no_grad():
        enc.embeddings.zero_()
        # level 0: scale 3, R=4, strides 1,5,25; put 1 at vertex (2,0,0) -> feature = s(fx)·(1-s(fy))·(1-s(fz))
        enc.embeddings[2, 0] = 1.0
    u = torch.tensor([[0.4, 0.0, 0.0]])  # pos = 0.4·3 + 0.5 = 1.7 -> floor 1, f = 0.7; y,z: pos 0.5, f=0.5
    s = lambda f: f * f * (3 - 2 * f)  # noqa: E731
    out = enc(u * 2 - 1)
    assert out[0, 0].item() == pytest.approx(s(0.7) * (1 - s(0.5)) ** 2, abs=1e-6)


# ---------------------------------------------------------------- time grid
TINY = paper_grid_config(num_levels=4, base_resolution=4, desired_resolution=32, log2_table_size=9)


def _time_enc(T: int = 5, seed: int = 0) -> TimeGridEncoding:
    enc = TimeGridEncoding(TINY, time_grid_size=T, backend="torch")
    with torch.no_grad():
        enc.embeddings.copy_(
            torch.rand(enc.embeddings.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        )
    return enc


def test_time_grid_t0_reads_only_grid0():
    enc = _time_enc()
    static = GridEncoding(TINY, backend="torch")
    with torch.no_grad():
        static.embeddings.copy_(enc.embeddings[0])
        enc.embeddings[1:] = float("nan")  # any read of another grid would poison the output
    x = torch.rand(64, 3) * 2 - 1
    out = enc(x, torch.zeros(64, 1))
    assert torch.isfinite(out).all()
    assert torch.equal(out, static(x))


def test_time_grid_interpolation_formula():
    enc = _time_enc(T=5)
    x = torch.rand(40, 3) * 2 - 1
    t = torch.full((40, 1), 0.3)  # g = 1.2 -> lo 1, hi 2, weight of hi 0.2 (in float32)
    g = torch.tensor(0.3) * 4
    w = (g - torch.floor(g)).item()
    expected = enc.grid_features(x, 2) * w + enc.grid_features(x, 1) * (1 - w)
    torch.testing.assert_close(enc(x, t), expected, atol=1e-6, rtol=0)
    # t = 1 reads the last grid; per-point times mix grids independently
    torch.testing.assert_close(enc(x, torch.ones(40, 1)), enc.grid_features(x, 4), atol=0, rtol=0)
    tp = torch.linspace(0, 1, 40)[:, None]
    out = enc(x, tp)
    for i in (0, 13, 39):
        torch.testing.assert_close(out[i : i + 1], enc(x[i : i + 1], tp[i : i + 1]), atol=1e-7, rtol=0)


def test_time_grid_from_static_copies_all_slots():
    static = GridEncoding(TINY, backend="torch")
    enc = TimeGridEncoding.from_static(static, time_grid_size=6)
    assert tuple(enc.embeddings.shape) == (6, static.embeddings.shape[0], 2)
    for i in range(6):
        assert torch.equal(enc.embeddings[i], static.embeddings)
    assert enc.embeddings.data_ptr() != static.embeddings.data_ptr()


def _naive_table_tv(table: torch.Tensor, L: int) -> torch.Tensor:
    """Upstream ``TV_loss`` with one encoder per grid (network_4dgrid.py)."""
    total = 0
    for i in range(table.shape[0] - 1):
        total = total + ((table[i] - table[i + 1]) ** 2).sum(-1).mean()
    return total / ((table.shape[0] - 1) * L)


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_time_tv_table_mode_value_and_grad(chunk):
    enc = _time_enc(T=7)
    loss = enc.time_tv_loss(mode="table", chunk=chunk)
    loss.backward()
    ref_tab = enc.embeddings.detach().clone().requires_grad_(True)
    ref = _naive_table_tv(ref_tab, TINY.num_levels)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(enc.embeddings.grad, ref_tab.grad, rtol=1e-5, atol=1e-9)


def test_time_tv_points_mode_equals_naive_formula():
    enc = _time_enc(T=4)
    loss = enc.time_tv_loss(n_points=500, generator=torch.Generator().manual_seed(3), mode="points")
    x = torch.rand(500, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1
    grids = []
    for i in range(4):
        g = GridEncoding(TINY, backend="torch")
        with torch.no_grad():
            g.embeddings.copy_(enc.embeddings[i])
        grids.append(g(x))
    naive = sum(((grids[i] - grids[i + 1]) ** 2).sum(-1).mean() for i in range(3)) / (3 * TINY.num_levels)
    torch.testing.assert_close(loss, naive, rtol=1e-5, atol=0)
    assert loss > 0


def test_time_tv_zero_for_identical_grids():
    enc = TimeGridEncoding.from_static(GridEncoding(TINY, backend="torch"), time_grid_size=5)
    assert enc.time_tv_loss("table").item() == 0.0
    assert enc.time_tv_loss("points", n_points=100).item() == 0.0


def test_time_tv_mode_is_explicit():
    """No default form: the config's ``loss.time_tv_mode`` chooses (SPEC 3.6's points form or the table)."""
    enc = _time_enc(T=4)
    with pytest.raises(TypeError):
        enc.time_tv_loss()  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="n_points"):
        enc.time_tv_loss("points")  # the point count (loss.time_tv_points) has no library default
    with pytest.raises(ConfigError, match="unknown time TV mode"):
        enc.time_tv_loss("grid")  # type: ignore[arg-type]
    table = enc.time_tv_loss("table")
    points = enc.time_tv_loss("points", n_points=2000, generator=torch.Generator().manual_seed(0))
    assert table > 0 and points > 0 and not torch.isclose(table, points)


def test_time_tv_points_fused_same_loss_and_gradient_as_plain():
    """PointsTimeTV (one node, gradients written per slice) vs the plain per-slice autograd form:
    bit-identical loss, the same table gradient up to fp32 summation order."""
    enc = _time_enc(T=6)
    with torch.no_grad():
        enc.embeddings.copy_(torch.randn(enc.embeddings.shape, generator=torch.Generator().manual_seed(2)))
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    plain = enc.time_tv_loss("points", n_points=400, generator=gen(), fused=False)
    plain.backward()
    g_plain = enc.embeddings.grad.clone()
    enc.embeddings.grad = None
    fused = enc.time_tv_loss("points", n_points=400, generator=gen())
    (fused * 1.0).backward()
    assert fused.item() == plain.item()
    torch.testing.assert_close(enc.embeddings.grad, g_plain, rtol=1e-5, atol=1e-9)


def test_time_tv_points_mode_draws_in_the_bound_box():
    """SPEC 3.6 / upstream: points uniform in ``[-bound, bound]^3``, divided by ``(T-1)·L``."""
    enc = TimeGridEncoding(TINY, time_grid_size=3, backend="torch", bound=2.0)
    with torch.no_grad():
        enc.embeddings.copy_(torch.rand(enc.embeddings.shape, generator=torch.Generator().manual_seed(1)))
    loss = enc.time_tv_loss("points", n_points=300, generator=torch.Generator().manual_seed(5))
    x = (torch.rand(300, 3, generator=torch.Generator().manual_seed(5)) * 2 - 1) * 2.0
    f = [enc.grid_features(x, i) for i in range(3)]
    naive = sum(((f[i] - f[i + 1]) ** 2).sum(-1).mean() for i in range(2)) / (2 * TINY.num_levels)
    torch.testing.assert_close(loss, naive, rtol=1e-6, atol=0)
