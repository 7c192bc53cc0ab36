"""The assembled steps of the NeRF systems (``stages/system.py``) as the stages build them: the light a
guidance render is given, and the exact loss terms of a reference step and of the regularisers.

Each test builds the system through the build layer from a config whose weights all differ, runs one step
with a spy on the renderer, and recomputes what the step should have returned from the captured render.
"""

from __future__ import annotations

import pytest
import torch

from animate124 import losses as L
from animate124.config import resolve_config
from animate124.guidance.interface import GuidanceOutput
from animate124.render.cameras import Cameras, camera_from_spherical, reference_camera
from animate124.stages import build
from animate124.stages import system as system_mod
from animate124.stages.dynamic import dynamic_system_kwargs
from animate124.stages.static import build_static_system
from animate124.stages.system import Clip, DynamicSystem, ReferenceData

CPU = torch.device("cpu")
#: every weight different (a weight applied to the wrong term shows), a light noise other than 1
WEIGHTS = {
    "loss": {"rgb": 2.5, "mask": 0.75, "depth": 0.125, "entropy": 3e-3, "orientation": 0.07, "normal_tv": 0.3,
             "normal_blur": 0.9, "time_tv": 0.2},
    "shading": {"light_noise": 0.7},
}  # fmt: skip


def _cfg(**sections):
    opts = {"static": {"prompt": "a toy"}, "dynamic": {"prompt": "a toy is spinning", "iters": 40}}
    for k, v in {**WEIGHTS, **sections}.items():
        opts[k] = {**opts.get(k, {}), **v}
    return resolve_config("tiny", None, opts, [])


def _reference(size: int) -> ReferenceData:
    g = torch.Generator().manual_seed(3)
    mask = torch.zeros(1, 1, 1, size, size, dtype=torch.bool)
    mask[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    depth = torch.rand(int(mask.sum()), generator=g)
    return ReferenceData(torch.rand(1, 1, 3, size, size, generator=g), mask, depth)


class StubPrior:
    """A prior that returns a differentiable loss of the images and draws nothing."""

    def __init__(self, name: str, loss_key: str) -> None:
        self.name, self.loss_key = name, loss_key

    def __call__(self, images, views, *, step, generator=None, noise=None, t=None) -> GuidanceOutput:
        return GuidanceOutput({self.loss_key: images.float().mean()})


@pytest.fixture
def renders(monkeypatch) -> list[tuple[tuple, dict, object]]:
    """Every call of the systems' renderer: (args, kwargs, output)."""
    seen: list[tuple[tuple, dict, object]] = []
    real = system_mod.render

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append((args, kwargs, out))
        return out

    monkeypatch.setattr(system_mod, "render", spy)
    return seen


def _static(cfg, sampler=None):
    torch.manual_seed(0)
    system, _ = build_static_system(
        cfg,
        CPU,
        reference=_reference(cfg.static.ref_size),
        priors={"sd": StubPrior("sd", "sds")},
        camera_sampler=sampler,
    )
    return system


def _dynamic(cfg, clip_sampler=None) -> DynamicSystem:
    torch.manual_seed(0)
    field = build.build_field(cfg.field, "dynamic", CPU)
    occ = build.build_occupancy(cfg, dynamic=True, device=CPU)
    kw = dynamic_system_kwargs(
        cfg,
        CPU,
        "dynamic",
        field=field,
        occupancy=occ,
        reference=_reference(cfg.dynamic.ref_size),
        preview_dir=None,
    )
    return DynamicSystem(video=StubPrior("video", "video_sds"), zero123=None, clip_sampler=clip_sampler, **kw)


# ------------------------------------------------------------------------------------------------- light
def test_the_light_of_a_moving_clip_follows_each_frames_camera(renders):
    """The light DynamicSystem hands the renderer: ``normalize(centre_f + n)``, one n ~ N(0, I)·light_noise
    per clip (drawn after the shading's two numbers), each frame lit from its own camera (SPEC 3.1;
    upstream ``dnerf/utils.py``: ``safe_normalize(rays_o + randn(3))``)."""
    cfg = _cfg()
    frames = cfg.dynamic.frames
    cams = camera_from_spherical(70.0, torch.linspace(-40.0, 80.0, frames), 1.8, 40.0, 16, 16)
    times = (torch.arange(frames, dtype=torch.float32) / frames)[None]

    def one_clip(generator: torch.Generator) -> Clip:  # draws nothing
        return Clip(cams, times, False, False)

    system = _dynamic(cfg, one_clip)
    gs = system.global_step(1)
    state = system.generator.get_state()
    system.guidance_step(gs, 1.0)
    ((_, kwargs, _),) = renders
    replay = torch.Generator().set_state(state)
    system.schedules.shading.choose(gs, replay)  # ambient k and the textureless coin
    n = torch.randn(3, generator=replay) * 0.7
    want = torch.nn.functional.normalize(cams.centers + n, dim=-1)
    torch.testing.assert_close(kwargs["light_dir"], want, rtol=0, atol=1e-6)
    assert kwargs["light_dir"].shape == (frames, 3)
    assert (kwargs["light_dir"][0] - kwargs["light_dir"][-1]).norm() > 0.5  # the frames' lights differ


def test_the_light_of_a_static_step_is_its_cameras(renders):
    """StaticSystem: the same formula for its one camera, after the shading draw and the camera draw."""
    cfg = _cfg()
    cam = camera_from_spherical(60.0, 135.0, 1.8, 40.0, 16, 16)
    system = _static(cfg, lambda g: cam)
    gs = 5  # past the normal-map warm-up (tiny: 2): lambertian or textureless
    state = system.generator.get_state()
    system.guidance_step(gs, 1.0)
    ((_, kwargs, _),) = renders
    replay = torch.Generator().set_state(state)
    system.schedules.shading.choose(gs, replay)
    n = torch.randn(3, generator=replay) * 0.7
    torch.testing.assert_close(kwargs["light_dir"], torch.nn.functional.normalize(cam.centers + n, dim=-1))


# ------------------------------------------------------------------------------------------------- terms
@pytest.mark.parametrize("gs", [1, 6])
def test_reference_step_is_each_weight_times_its_raw_loss(renders, gs):
    """reference_step: rgb, mask and depth are λ × the raw loss of the reference render against the reference
    data; the regularisers are λ × theirs, the entropy also × min(1, 2·gs/total) (tiny: total 8, so 0.25 at
    step 1 and 1 at step 6). The render is the reference camera, lambertian, ambient 1, white, with the
    reference ray noise."""
    cfg = _cfg()
    system = _static(cfg)
    terms = system.reference_step(gs)
    ((args, kw, out),) = renders
    ref = system.reference
    cams: Cameras = args[1]
    want_cam = reference_camera(cfg.static.ref_size, cfg.static.ref_size, cfg.camera.radius, cfg.camera.fovy)
    assert torch.equal(cams.c2w, want_cam.c2w) and torch.equal(cams.fovy_deg, want_cam.fovy_deg)
    assert (kw["shading"], kw["ambient"], kw["light_dir"]) == ("lambertian", 1.0, None)
    assert torch.equal(kw["bg_color"], torch.ones(3)) and kw["ray_noise_scale"] == cfg.camera.reference_noise
    ramp = min(1.0, 2.0 * gs / cfg.static.iters)
    assert ramp == (0.25 if gs == 1 else 1.0)
    want = {
        "rgb": 2.5 * L.masked_rgb_loss(out.rgb, ref.rgb, ref.mask),
        "mask": 0.75 * L.mask_loss(out.opacity, ref.mask),
        "depth": 0.125 * L.depth_loss(out.depth[0, 0], ref.depth, ref.mask[0, 0]),
        "entropy": 3e-3 * ramp * L.entropy_loss(out.weights),
        "orientation": 0.07 * L.orientation_loss(out.orientation),
        "normal_tv": 0.3 * L.normal_tv_loss(out.normal),
        "normal_blur": 0.9 * L.normal_blur_loss(out.normal),
    }
    assert set(terms) == set(want)
    for k, v in want.items():
        assert v.abs() > 0, k  # each term is live, so a wrong weight shows
        torch.testing.assert_close(terms[k], v, rtol=1e-6, atol=0), k


def test_dynamic_regularizers_ramp_the_entropy_on_the_global_step(renders):
    """DynamicSystem: the regularisers of a clip and the time TV, each λ × its raw value; the entropy ramp
    reads upstream's cumulative step (static 8 + dynamic 40 = 48: 2·9/48 at the first dynamic step)."""
    cfg = _cfg()
    system = _dynamic(cfg)
    gs = system.global_step(1)
    assert gs == 9
    terms, _ = system.guidance_step(gs, 1.0)
    ((_, _, out),) = renders
    want = {
        "video_sds": out.rgb.float().mean(),
        "entropy": 3e-3 * (2 * 9 / 48) * L.entropy_loss(out.weights),
        "orientation": 0.07 * L.orientation_loss(out.orientation),
        "normal_tv": 0.3 * L.normal_tv_loss(out.normal),
        "normal_blur": 0.9 * L.normal_blur_loss(out.normal),
    }
    assert set(terms) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(terms[k], v, rtol=1e-6, atol=0), k
    state = system.generator.get_state()
    tv = system.extra_terms(gs)["time_tv"]
    replay = torch.Generator().set_state(state)
    raw = system.field.time_tv_loss("points", n_points=cfg.loss.time_tv_points, generator=replay)
    torch.testing.assert_close(tv, 0.2 * raw, rtol=1e-6, atol=0)
    assert raw > 0
