"""Textual inversion: training touches only the placeholder row, checkpoint/resume, IO, augmentations."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers_guidance import make_sd, still_views

from animate124.errors import InputError
from animate124.guidance import textual_inversion as ti

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "animate124"
UPSTREAM = ["panda-dance", "fox-game", "astronaut-horse", "space-shuttle", "tiger-guitar"]


def _sd(store):
    from animate124.models.loaders import load_sd

    return load_sd(store)


CFG = ti.TIConfig(
    placeholder="<a124>", initializer="object", steps=6, lr=5e-2, batch_size=2, resolution=32,
    augment=True, upstream_aug_range_bug=False, seed=3, checkpoint_every=3, mixed_precision=False,
)  # fmt: skip


def _photo() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 48, 72, generator=g)


def test_training_changes_only_the_placeholder_row(store, tmp_path: Path) -> None:
    c = _sd(store)
    before = c.text_encoder.get_input_embeddings().weight.detach().clone()
    params_before = {k: v.clone() for k, v in c.unet.state_dict().items()}
    seen: list[int] = []
    vec = ti.train_textual_inversion(
        c, _photo(), CFG, checkpoint_dir=tmp_path, device="cpu", progress=lambda s, n, d: seen.append(s)
    )
    assert seen == list(range(0, 7))  # the bar starts at 0, then one call per step
    w = c.text_encoder.get_input_embeddings().weight.detach()
    assert w.shape[0] == before.shape[0] + 1
    assert torch.equal(w[: before.shape[0]], before)  # every other row bit-identical
    tid = c.tokenizer.convert_tokens_to_ids("<a124>")
    assert tid == before.shape[0]
    init = before[c.tokenizer.encode("object", add_special_tokens=False)[0]]
    assert torch.equal(w[tid], vec) and not torch.allclose(vec, init)
    assert all(torch.equal(v, params_before[k]) for k, v in c.unet.state_dict().items())
    from animate124.engine.checkpoint import load_latest_checkpoint

    ck = load_latest_checkpoint(tmp_path)  # checkpoints every 3 steps; the newest is kept
    assert ck.step == 6 and sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-0000006.json",
        "ckpt-0000006.safetensors",
    ]
    assert torch.equal(ck.tensors["system/vector"], vec)


def test_first_step_is_one_adamw_step_down_the_loss_gradient(
    store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After one step the vector is exactly ``init·(1 − lr·wd) − lr·g/(|g| + eps)`` (AdamW's first
    step, bias-corrected: m̂ = g, v̂ = g²), with g = ∂MSE(ε̂, ε)/∂token computed here from the loss
    itself (before whatever the loop does with it): autograd from the MSE back to the text
    transformer's input embeddings, summed over the placeholder positions.

    Fails if the learning rate, the step count, the optimizer or the sign of the update is wrong, or if
    the gradient does not reach the token."""
    c = _sd(store)
    cfg = replace(CFG, steps=1)
    init = (
        c.text_encoder.get_input_embeddings()
        .weight[c.tokenizer.encode(cfg.initializer, add_special_tokens=False)[0]]
        .detach()
        .clone()
    )
    seen: dict[str, list[torch.Tensor]] = {"ids": [], "emb": [], "grad": []}

    def capture(_mod, args, kwargs, out):
        seen["ids"].append(kwargs["input_ids"] if "input_ids" in kwargs else args[0])
        seen["emb"].append(out)

    mse = torch.nn.functional.mse_loss

    def mse_and_gradient(pred, target, *args, **kwargs):
        loss = mse(pred, target, *args, **kwargs)
        seen["grad"].append(torch.autograd.grad(loss, seen["emb"][-1], retain_graph=True)[0])
        return loss

    monkeypatch.setattr(ti.F, "mse_loss", mse_and_gradient)
    # CLIPTextEmbeddings (token + position); ``text_model.embeddings`` before transformers 5
    embeddings = next(m for n, m in c.text_encoder.named_modules() if n.split(".")[-1] == "embeddings")
    handle = embeddings.register_forward_hook(capture, with_kwargs=True)
    try:
        vec = ti.train_textual_inversion(c, _photo(), cfg, checkpoint_dir=tmp_path, device="cpu")
    finally:
        handle.remove()
    (ids,), (g_out,) = seen["ids"], seen["grad"]  # one forward, one loss
    tid = c.tokenizer.convert_tokens_to_ids(cfg.placeholder)
    assert int((ids == tid).sum()) == cfg.batch_size  # one placeholder per prompt
    g = (g_out * (ids == tid)[..., None]).sum(dim=(0, 1))
    assert (g != 0).all()
    expected = init * (1 - cfg.lr * cfg.weight_decay) - cfg.lr * g / (g.abs() + cfg.eps)
    assert torch.allclose(vec, expected, rtol=0, atol=1e-3 * cfg.lr)
    # every coordinate moved by lr (the first Adam step is sign-like), away from the initializer
    assert torch.allclose((vec - init).abs(), torch.full_like(vec, cfg.lr), rtol=0, atol=0.01 * cfg.lr)


def test_checkpoint_and_resume_continue_exactly(store, tmp_path: Path) -> None:
    full = ti.train_textual_inversion(_sd(store), _photo(), CFG, checkpoint_dir=tmp_path / "a", device="cpu")
    calls = {"n": 0}

    def stop_after_four() -> bool:
        calls["n"] += 1
        return calls["n"] > 4

    ti.train_textual_inversion(
        _sd(store), _photo(), CFG, checkpoint_dir=tmp_path / "b", device="cpu", should_stop=stop_after_four
    )
    from animate124.engine.checkpoint import load_latest_checkpoint

    assert load_latest_checkpoint(tmp_path / "b").step == 4
    seen: list[int] = []
    resumed = ti.train_textual_inversion(
        _sd(store), _photo(), CFG, checkpoint_dir=tmp_path / "b", device="cpu",
        progress=lambda s, n, d: seen.append(s),
    )  # fmt: skip
    assert seen == [4, 5, 6]  # the bar starts at the resume point, then steps 5 and 6 run
    assert torch.allclose(resumed, full, atol=1e-6)


def test_token_checks(store, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="panda dance"):
        ti.train_textual_inversion(
            _sd(store),
            _photo(),
            replace(CFG, initializer="panda dance"),
            checkpoint_dir=tmp_path,
            device="cpu",
        )
    c = _sd(store)
    tid, init = ti.prepare_placeholder(c.tokenizer, c.text_encoder, "<x>", "object")
    assert torch.equal(
        init,
        c.text_encoder.get_input_embeddings().weight[
            c.tokenizer.encode("object", add_special_tokens=False)[0]
        ],
    )
    with pytest.raises(InputError, match="already exists"):
        ti.train_textual_inversion(
            c, _photo(), replace(CFG, placeholder="<x>"), checkpoint_dir=tmp_path, device="cpu"
        )
    assert not any(tmp_path.iterdir())


def test_save_load_roundtrip_and_sd_guidance_accepts_it(store, tmp_path: Path) -> None:
    vec = torch.randn(32)
    for name in ("e.safetensors", "learned_embeds.bin"):
        ti.save_learned_embeds(tmp_path / name, {"_cat_": vec})
        loaded = ti.load_learned_embeds(tmp_path / name)
        assert list(loaded) == ["_cat_"] and torch.equal(loaded["_cat_"], vec)
    c = _sd(store)
    guid = make_sd(c, prompt="a cat dancing", image_size=64, view_dependent=False)
    ((tok, v),) = ti.load_learned_embeds(tmp_path / "e.safetensors").items()
    guid.add_learned_token(tok, v)
    guid.set_prompt("a <token> dancing")
    img = torch.rand(1, 1, 3, 32, 32, requires_grad=True)
    out = guid(img, still_views(), step=0, generator=torch.Generator().manual_seed(0))
    out.losses["sds"].backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    with_tok = guid.text.encode("a <token> dancing")
    assert not torch.allclose(with_tok, guid.text.encode("a cat dancing"))
    (tmp_path / "bad.bin").write_bytes(b"not a pickle")
    with pytest.raises(InputError):
        ti.load_learned_embeds(tmp_path / "bad.bin")


@pytest.mark.parametrize("name", UPSTREAM)
def test_upstream_learned_embeds_load(name: str) -> None:
    path = DATA / name / "learned_embeds.bin"
    if not path.is_file():
        pytest.skip(f"reference data absent: {path}")
    emb = ti.load_learned_embeds(path)
    assert len(emb) == 1
    ((key, vec),) = emb.items()
    assert key.startswith("_") and key.endswith("_")
    assert vec.shape == (768,) and vec.dtype == torch.float32
    assert 0.4 < float(vec.norm()) < 0.6  # SPEC 2: L2 norms about 0.50-0.52


# ---------------------------------------------------------------------------------------------- augmentations


def test_augmentation_ranges_and_bug_flag() -> None:
    gen = torch.Generator().manual_seed(0)
    base = ti.base_image(_photo(), 32, augment=True)
    assert base.shape == (3, 40, 40)  # 640·32/512
    draws = [ti.training_pixels(base, CFG, gen) for _ in range(200)]
    assert all(x.shape == (3, 32, 32) for x in draws)
    # the VAE sees [-1, 1]: every augmented image reaches below 0 (an unmapped [0, 1] image cannot)
    assert max(float(x.min()) for x in draws) < 0.0
    # the draws differ, and grayscale (p = 0.1) hits about 20 of 200 (P(outside [6, 40]) < 1e-3)
    assert len({float(x.sum()) for x in draws}) > 190
    gray = sum(bool(torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])) for x in draws)
    assert 6 <= gray <= 40
    bug_cfg = replace(CFG, upstream_aug_range_bug=True)
    for seed in range(6):
        fixed = ti.training_pixels(base, CFG, torch.Generator().manual_seed(seed))
        bug = ti.training_pixels(base, bug_cfg, torch.Generator().manual_seed(seed))
        assert float(bug.min()) >= 0.0  # the bug: [0, 1] pixels go to the VAE
        assert torch.allclose(fixed, bug * 2 - 1, atol=1e-6)  # the fix is exactly x -> 2x - 1
    plain = replace(CFG, augment=False)
    base_plain = ti.base_image(_photo(), 32, augment=False)
    assert base_plain.shape == (3, 32, 32)
    x = ti.training_pixels(base_plain, plain, torch.Generator().manual_seed(0))
    assert torch.allclose(x, base_plain * 2 - 1) or torch.allclose(x, base_plain.flip(-1) * 2 - 1)


def test_rotate_fill_blur_hsv() -> None:
    black = torch.zeros(3, 32, 32)
    r = ti.rotate(black, 10.0, fill=1.0)
    assert r[:, 0, 0].min() > 0.99 and r[:, 16, 16].max() < 1e-6  # corners white, centre unchanged
    y = torch.rand(3, 8, 8)
    assert torch.allclose(ti.rotate(y, 0.0), y, atol=1e-6)
    const = torch.full((3, 16, 16), 0.3)
    assert torch.allclose(ti.gaussian_blur(const, 5, 1.5), const, atol=1e-6)
    x = torch.rand(3, 8, 8)
    assert torch.allclose(ti._hsv_to_rgb(ti._rgb_to_hsv(x)), x, atol=1e-5)
    assert torch.equal(
        ti.center_crop(torch.arange(25.0).view(1, 5, 5), 3), torch.arange(25.0).view(1, 5, 5)[:, 1:4, 1:4]
    )
    assert ti.resize_short_side(torch.rand(3, 40, 60), 20).shape == (3, 20, 30)
    assert len(ti.IMAGENET_TEMPLATES_SMALL) == 27
