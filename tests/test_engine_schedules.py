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


def test_level_mask_only_static_until_3000(paper):
    m = stage_schedules(paper, "static").level_mask
    assert isinstance(m, LevelMaskSchedule)
    assert m.max_level(1) == 8 and m.max_level(3000) == 8 and m.max_level(3001) is None
    assert stage_schedules(paper, "dynamic").level_mask is None


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
