"""Schedules at chosen steps against SPEC 3.2, 3.4, 3.6, 4, 5 and the upstream global-step offsets."""

from __future__ import annotations

import pytest
import torch

from animate124.config import resolve_config
from animate124.engine.schedules import Every, LevelMaskSchedule, ReferenceSchedule, ShadingSchedule
from animate124.stages.build import stage_clock, stage_schedules


@pytest.fixture(scope="module")
def paper():
    return resolve_config("paper")


def test_clock_offsets(paper):
    assert stage_clock(paper, "static").global_step(1) == 1
    assert stage_clock(paper, "dynamic").global_step(1) == 5001
    assert stage_clock(paper, "dynamic").total == 15000
    assert stage_clock(paper, "refine").global_step(1) == 15001
    assert stage_clock(paper, "refine").total == 20000


def test_reference_rule_static_and_dynamic(paper):
    st = stage_schedules(paper, "static").reference
    assert all(st.is_reference(g) for g in range(1, 100))  # steps 1-99 are all reference steps
    assert [g for g in range(100, 121) if st.is_reference(g)] == [100, 104, 108, 112, 116, 120]
    dy = stage_schedules(paper, "dynamic").reference
    gs = [stage_clock(paper, "dynamic").global_step(s) for s in range(1, 13)]
    assert [g for g in gs if dy.is_reference(g)] == [5004, 5008, 5012]
    # 25% of the dynamic stage's steps are reference steps
    n = sum(dy.is_reference(5000 + s) for s in range(1, 10001))
    assert n == 2500
    assert ReferenceSchedule(0, 4).is_reference(0)


def test_entropy_ramp_with_cumulative_offsets(paper):
    st = stage_schedules(paper, "static").entropy
    assert st.factor(1) == pytest.approx(2 / 5000)
    assert st.factor(2500) == 1.0 and st.factor(5000) == 1.0
    dy = stage_schedules(paper, "dynamic").entropy
    assert dy.factor(5001) == pytest.approx(2 * 5001 / 15000)  # 0.667 at the first dynamic step
    assert dy.factor(7499) < 1.0 and dy.factor(7500) == 1.0
    assert stage_schedules(paper, "refine").entropy.factor(15001) == 1.0


def _upstream_level_masks(iters: int, mask_iters: int, levels: int) -> list[int]:
    """Upstream's ``train_one_epoch`` order (``nerf/utils.py``): the mask is set from ``global_step``, THEN
    ``global_step += 1`` and the step trains. Returns the masked level count of each step (index = post-
    increment global step - 1)."""
    global_step, out = 0, []
    while global_step < iters:
        grid_levels_mask = 0 if global_step > mask_iters else levels
        global_step += 1
        out.append(grid_levels_mask)
    return out


def test_level_mask_follows_upstreams_loop_order(paper):
    """Masked through upstream's counter 3000 inclusive: the post-increment steps 1-3001 (SPEC 4)."""
    m = stage_schedules(paper, "static").level_mask
    assert isinstance(m, LevelMaskSchedule)
    upstream = _upstream_level_masks(paper.static.iters, paper.static.grid_mask_iters, 8)
    ours = [
        16 - m.max_level(g) if m.max_level(g) is not None else 0 for g in range(1, paper.static.iters + 1)
    ]
    assert ours == upstream
    assert m.max_level(3001) == 8 and m.max_level(3002) is None  # the last masked step, the first free one
    assert stage_schedules(paper, "dynamic").level_mask is None


def test_emulated_loss_scale_is_the_grad_scalers_own_schedule(paper):
    """``LossScaleSchedule`` (static.sds_grad_scale=upstream without a real scaler) against torch's GradScaler
    with the trainer's settings, stepped 4500 times without an overflow: the scale each step runs with."""
    from animate124.engine.schedules import GRAD_SCALER
    from animate124.engine.trainer import Trainer, TrainerSettings

    sched = stage_schedules(paper, "static").loss_scale
    settings = TrainerSettings(
        iters=1, device=torch.device("cpu"), precision="fp16", grad_clip=0.0, checkpoint_every=1,
        log_every=1, preview_every=0,
    )  # fmt: skip
    scaler = Trainer(settings).scaler  # the trainer's own scaler (its settings are GRAD_SCALER)
    assert scaler.get_scale() == GRAD_SCALER["init_scale"] == 2.0**16
    p = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([p], lr=0.0)
    seen = []
    for _step in range(1, 4501):
        seen.append(scaler.get_scale())
        opt.zero_grad()
        scaler.scale(p.sum()).backward()
        scaler.step(opt)
        scaler.update()
    assert [sched.scale(k) for k in range(1, 4501)] == seen
    assert (sched.scale(2000), sched.scale(2001), sched.scale(4001), sched.scale(5000)) == (
        2**16,
        2**17,
        2**18,
        2**18,
    )


def test_shading_normal_warmup_then_random(paper):
    sh = stage_schedules(paper, "static").shading
    g = torch.Generator().manual_seed(0)
    assert sh.choose(999, g).mode == "normal" and sh.choose(999, g).ambient == 1.0
    draws = [sh.choose(1000, g) for _ in range(4000)]
    tl = sum(d.mode == "textureless" for d in draws) / len(draws)
    assert tl == pytest.approx(0.2, abs=0.03)
    amb = torch.tensor([d.ambient for d in draws])
    assert amb.min() >= 0.1 and amb.max() <= 1.0 and amb.mean().item() == pytest.approx(0.55, abs=0.02)
    assert {d.mode for d in draws} == {"textureless", "lambertian"}
    dy = stage_schedules(paper, "dynamic").shading
    assert dy.choose(5001, g).mode != "normal"
    rf = stage_schedules(paper, "refine").shading
    assert all(rf.choose(15001 + i, g).mode == "lambertian" for i in range(200))  # textureless rate 0
    assert ShadingSchedule(0, 1.0, (0.3, 0.3)).choose(5, g).mode == "textureless"


def test_occupancy_cadence(paper):
    occ = stage_schedules(paper, "static").occupancy
    assert isinstance(occ, Every)
    assert [g for g in range(1, 50) if occ.due(g)] == [1, 17, 33, 49]
    dy = stage_schedules(paper, "dynamic").occupancy
    assert [g for g in range(5001, 5040) if dy.due(g)] == [5009, 5025]
