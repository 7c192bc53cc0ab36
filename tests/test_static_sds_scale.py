"""The static stage's SDS strength as upstream ran it (``static.sds_grad_scale``, SPEC 11.1), through the
assembled step: ``StaticSystem`` with the tiny SD and Zero123 priors, trained one step by the ``Trainer``.

Upstream's static stage pushed its SDS gradients with ``latents.backward(g)``, past the GradScaler, and
``scaler.unscale_`` then divided every gradient by the loss scale S. The field therefore got
``∇(reference + regularisers) + ∇SDS / S``. Here the SDS surrogate losses are weighted 1/S and go through the
scaler with the rest. The tests replay the same step (same generators) and rebuild upstream's mechanism with
a real GradScaler, or the two gradient parts with ``autograd.grad``, and compare what the optimizer is handed.
"""

from __future__ import annotations

import pytest
import torch

from animate124.config import resolve_config
from animate124.engine.trainer import Trainer
from animate124.stages import build
from animate124.stages.static import build_static_system
from animate124.stages.system import ReferenceData

CPU = torch.device("cpu")
SDS_TERMS = ("sds", "zero123")
#: one step, a guidance step (and so are the steps 2000, 2001, 4001 used below), lambertian or textureless
OPTIONS = {
    "static": {"prompt": "a toy", "iters": 1, "known_iters": 0, "ref_interval": 7, "normal_warmup_iters": 0}
}


class RecordingSGD(torch.optim.SGD):
    """lr 0: keeps the gradients it is handed (after the scaler's unscale), changes nothing."""

    def __init__(self, params) -> None:
        super().__init__(params, lr=0.0)
        self.grads: list[torch.Tensor] | None = None

    def step(self, closure=None):  # noqa: D102 - see the class docstring
        self.grads = [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]
        return super().step(closure)


def _config(precision: str, mode: str):
    sets = [f"run.precision={precision}", f"static.sds_grad_scale={mode}"]
    return resolve_config("tiny", None, OPTIONS, sets)


def _system(cfg):
    """A fresh static system (same field weights and generators every time) with the tiny SD and Zero123."""
    s = cfg.static.ref_size
    reference = ReferenceData(
        torch.rand(1, 1, 3, s, s, generator=torch.Generator().manual_seed(1)),
        torch.ones(1, 1, 1, s, s, dtype=torch.bool),
        None,
    )
    zref = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    priors = {
        "sd": build.build_sd_guidance(cfg, CPU, build.stage_prompt(cfg, "static")),
        "zero123": build.build_zero123_guidance(cfg, CPU, "static", zref),
    }
    torch.manual_seed(cfg.run.seed)  # the field's initial weights (after the priors: a first build draws too)
    system, _ = build_static_system(cfg, CPU, reference=reference, priors=priors)
    return system


def _trainer_grads(cfg, tmp_path, scale: float | None = None) -> tuple[list[torch.Tensor], object]:
    """Step 1 through the Trainer; the gradients the optimizer gets (after unscale). ``scale``: the
    GradScaler's current scale (as after backoffs), set before the step."""
    system = _system(cfg)
    params = list(system.field.parameters())
    opt = RecordingSGD(params)
    trainer = Trainer(build.trainer_settings(cfg, "static"))
    if scale is not None:
        assert trainer.scaler.is_enabled()
        trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": scale})
    trainer.run(system, opt, checkpoint_dir=tmp_path / "ck")
    assert opt.grads is not None, "the step was skipped"
    return opt.grads, system


def _step_terms(cfg, dtype: torch.dtype | None, step: int = 1):
    """The same step's loss terms from a ``nominal`` system (SDS at full weight) and its parameters."""
    system = _system(cfg)
    system.before_step(step)
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        out = system.training_step(step, None)
    return out.losses, list(system.field.parameters())


def _grad(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs, strict=True)]


def _flat(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().double().reshape(-1) for t in ts])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_fp16_grad_scaler_gives_upstreams_gradient(tmp_path):
    """fp16 + GradScaler at a real scale S other than the 2^16 a fresh scaler starts with (as after growth or
    backoffs): the optimizer gets ∇(regularisers) + ∇SDS/S, the gradient upstream's mechanism (SDS pushed past
    the scaler, then ``unscale_``) gives for the same step."""
    terms, params = _step_terms(_config("fp16", "nominal"), torch.float16)
    assert set(SDS_TERMS) <= set(terms) and not {"rgb", "mask"} & set(terms)  # a guidance step
    sds = sum(terms[k] for k in SDS_TERMS)
    rest = sum(v for k, v in terms.items() if k not in SDS_TERMS)
    # the parts as the two paths compute them in fp16: the regularisers' backward scaled (unscaled, their
    # small fp16 gradients would underflow), the SDS backward not (upstream's latents.backward(g))
    reg = _flat(_grad(rest * 2.0**16, params)) / 2.0**16
    sds_grad = _flat(_grad(sds, params))
    # S: a power of two other than 2^16 at which both parts matter (so a wrong weight on either one shows)
    k = round(torch.log2(sds_grad.norm() / reg.norm()).item())
    scale = 2.0 ** (k + 1 if k == 16 else k)
    assert 0.3 < float((sds_grad / scale).norm() / reg.norm()) < 3

    # upstream's mechanism on the same step: a real GradScaler at S, the SDS backward outside it
    upstream_scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    opt = RecordingSGD(params)
    upstream_scaler.scale(rest).backward(retain_graph=True)
    sds.backward()  # = latents.backward(g): ∂(surrogate)/∂z = g for one image
    upstream_scaler.unscale_(opt)
    expected = _flat([p.grad for p in params])
    # Tolerance: the fp16 layers (autocast) see the SDS and the other gradients summed in one backward here,
    # one backward each there; each rounds to fp16 (2^-11 = 4.9e-4) in a few layers: measured 1.7e-3.
    # The nearest wrong answer (S off by 2) is 0.3 off, the others (2^16, nominal) much more.
    assert _rel(expected, reg + sds_grad / scale) < 1e-2  # upstream's mechanism is this sum

    got, _ = _trainer_grads(_config("fp16", "upstream"), tmp_path, scale)
    assert _rel(_flat(got), expected) < 1e-2
    # the errors this guards against are far outside that tolerance
    assert _rel(reg + sds_grad / 2**16, expected) > 0.1  # the fresh scaler's S instead of the real one
    assert _rel(reg + sds_grad, expected) > 1.0  # nominal weights


def test_bf16_and_fp32_use_the_scalers_schedule_without_overflows(tmp_path):
    """Without a GradScaler (bf16, fp32) the SDS terms are weighted by the emulated S(step) = 2^16 at step 1:
    the optimizer gets ∇(regularisers) + ∇SDS/2^16, as in fp16 with a scaler that never overflowed."""
    # tolerance: bf16 rounds to 2^-8 = 3.9e-3 in each autocast layer (measured 1.5e-2), fp32 summation order
    # (measured 3e-6); an S off by 2 is about 0.4 off here, nominal weights 2^16 times
    for precision, dtype, tol in (("bf16", torch.bfloat16, 5e-2), ("fp32", None, 1e-4)):
        got, _ = _trainer_grads(_config(precision, "upstream"), tmp_path / precision)
        terms, params = _step_terms(_config(precision, "nominal"), dtype)
        sds = sum(terms[k] for k in SDS_TERMS)
        rest = sum(v for k, v in terms.items() if k not in SDS_TERMS)
        reg, sds_grad = _flat(_grad(rest, params)), _flat(_grad(sds, params))
        expected = reg + sds_grad / 2**16
        assert 0.05 < float((sds_grad / 2**16).norm() / reg.norm()) < 20, precision
        assert _rel(_flat(got), expected) < tol, precision
        assert _rel(reg + sds_grad, _flat(got)) > 1.0, precision  # nominal weights would be far off


@pytest.mark.parametrize("step,scale", [(2000, 2**16), (2001, 2**17), (4001, 2**18)])
def test_emulated_scale_follows_the_step(step, scale):
    """At later steps the SDS terms are the nominal ones times exactly 1/S(step) (powers of two: exact),
    the other terms unchanged, and the log says which S was used."""
    up = _system(_config("fp32", "upstream"))
    nominal = _system(_config("fp32", "nominal"))
    a = up.training_step(step, None)
    b = nominal.training_step(step, None)
    assert a.scalars["sds_loss_scale"] == scale and "sds_loss_scale" not in b.scalars
    assert set(a.losses) == set(b.losses)
    for k in a.losses:
        want = b.losses[k] / scale if k in SDS_TERMS else b.losses[k]
        assert torch.equal(a.losses[k].detach(), want.detach()), k


def test_old_switch_is_read_as_the_new_one():
    """``static.legacy_sds_scaling`` (before this version) keeps its meaning in saved configs."""
    assert resolve_config("tiny", sets=["static.legacy_sds_scaling=true"]).static.sds_grad_scale == "upstream"
    assert resolve_config("tiny", sets=["static.legacy_sds_scaling=false"]).static.sds_grad_scale == "nominal"
    from animate124.errors import ConfigError

    with pytest.raises(ConfigError, match="contradicts"):
        resolve_config("tiny", sets=["static.legacy_sds_scaling=false", "static.sds_grad_scale=upstream"])
