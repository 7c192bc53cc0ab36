"""Every role's tiny model loads from the HF cache layout through ModelStore + the real loaders, and
runs a forward pass with the right shapes. Also: the four Zero123-XL projection layouts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from animate124.errors import ModelNotFoundError
from animate124.models import loaders as L
from animate124.models.registry import ROLES
from animate124.models.store import ModelStore
from animate124.models.testing import tiny_cache
from animate124.models.tiny import (
    ZERO123_LAYOUTS,
    build_tiny_repo,
    is_tiny_cache,
    tiny_projection_tensors,
)
from animate124.models.tiny_tokenizer import TINY_WORDS


@pytest.fixture(autouse=True)
def _no_model_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("ANIMATE124_MODEL_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tiny_cache(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def store(cache) -> ModelStore:
    return ModelStore(cache_dir=cache, offline=True)


def _frozen(*modules) -> bool:
    return all(not p.requires_grad for m in modules for p in m.parameters()) and not any(
        m.training for m in modules
    )


def test_cache_layout_and_marker(cache, store):
    assert is_tiny_cache(cache)
    assert tiny_cache(cache) == cache  # second call: no rebuild
    for role, spec in ROLES.items():
        repo = cache / "hub" / ("models--" + spec.repo_id.replace("/", "--"))
        commit = (repo / "refs" / "main").read_text()
        assert len(commit) == 40 and (repo / "snapshots" / commit).is_dir(), role
        assert store.verify(role) == [], role
        assert store.cached_size(role) < 8_000_000, role  # "a few MB at most"
    assert (
        cache / "hub" / "models--ali-vilab--text-to-video-ms-1.7b" / "snapshots" / ROLES["video"].revision
    ).is_dir()


def test_tiny_file_names_match_real_repos(store):
    sd = store.resolve("sd")
    for rel in ROLES["sd"].allow_patterns:
        if rel != "feature_extractor/preprocessor_config.json" or (sd / rel).exists():
            assert (sd / rel).is_file(), rel
    assert (sd / "tokenizer" / "merges.txt").read_text().startswith("#version: 0.2\n")
    assert not (store.resolve("controlnet") / "diffusion_pytorch_model.safetensors").exists()
    assert (store.resolve("controlnet") / "diffusion_pytorch_model.bin").is_file()
    assert (store.resolve("video", "zeroscope") / "unet" / "diffusion_pytorch_model.bin").is_file()
    assert (store.resolve("video") / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()


def test_tokenizer_single_token_words(store):
    comps = L.load_sd(store)
    tok = comps.tokenizer
    for word in ("a", "photo", "of", "the", "panda", "cat", "dog", *TINY_WORDS):
        ids = tok(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, (word, tok.convert_ids_to_tokens(ids))
    ids = tok("a photo of a panda", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and ids[6] == tok.eos_token_id
    assert comps.text_encoder.config.vocab_size == len(tok)


def test_sd_forward(store):
    sd = L.load_sd(store)
    assert type(sd.scheduler).__name__ == "DDIMScheduler"
    assert (
        sd.scheduler.config.num_train_timesteps == 1000
        and sd.scheduler.config.beta_schedule == "scaled_linear"
    )
    assert _frozen(sd.vae, sd.unet, sd.text_encoder)
    assert sd.unet.dtype == torch.float32  # fp16 files cast to the requested dtype
    with torch.no_grad():
        ids = sd.tokenizer(
            ["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        emb = sd.text_encoder(ids)[0]
        assert emb.shape == (1, 77, 32)
        lat = (
            sd.vae.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latent_dist.mode() * sd.vae.config.scaling_factor
        )
        assert lat.shape == (1, 4, 8, 8)
        eps = sd.unet(lat, torch.tensor([500]), encoder_hidden_states=emb).sample
        assert eps.shape == (1, 4, 8, 8) and torch.isfinite(eps).all()
        assert sd.vae.decode(lat / sd.vae.config.scaling_factor).sample.shape == (1, 3, 64, 64)


def test_sd_fp16_keeps_vae_fp32(store):
    sd = L.load_sd(store, dtype=torch.float16)
    assert sd.unet.dtype == torch.float16 and sd.text_encoder.dtype == torch.float16
    assert sd.vae.dtype == torch.float32
    assert L.load_sd(store, dtype=torch.float16, vae_dtype=torch.float16).vae.dtype == torch.float16


def test_zero123_forward(store):
    z = L.load_zero123(store)
    assert z.layout == "ashawkey" and isinstance(z.projection, torch.nn.Linear)
    assert (z.projection.in_features, z.projection.out_features) == (36, 32)
    assert _frozen(z.vae, z.unet, z.image_encoder, z.projection)
    with torch.no_grad():
        img_emb = z.image_encoder(torch.rand(1, 3, 32, 32)).image_embeds
        assert img_emb.shape == (1, 32)
        cam = torch.tensor([[0.1, 0.0, 1.0, 0.0]])
        ctx = z.projection(torch.cat([img_emb, cam], -1))[:, None]
        ref = z.vae.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latent_dist.mode()
        x = torch.cat([torch.randn(1, 4, 8, 8), ref], 1)
        assert z.unet(x, torch.tensor([300]), encoder_hidden_states=ctx).sample.shape == (1, 4, 8, 8)


@pytest.mark.parametrize("layout", ZERO123_LAYOUTS)
def test_zero123_layouts_load_exact_projection(tmp_path, layout):
    folder = build_tiny_repo("zero123", tmp_path / layout, layout=layout, seed=3)
    proj_dir = "clip_camera_projection" if layout in ("ashawkey", "bennyguo") else "cc_projection"
    assert (folder / proj_dir / "config.json").is_file()
    store = ModelStore(cache_dir=tmp_path / "empty", offline=True, overrides={"zero123": str(folder)})
    z = L.load_zero123(store)
    assert z.layout == layout
    ref = tiny_projection_tensors(layout, seed=3)
    (wkey,) = [k for k in ref if k.endswith("weight")]
    (bkey,) = [k for k in ref if k.endswith("bias")]
    stored = torch.float16 if layout in ("ashawkey", "bennyguo") else torch.float32
    assert torch.equal(z.projection.weight, ref[wkey].to(stored).float())
    assert torch.equal(z.projection.bias, ref[bkey].to(stored).float())
    assert {"ashawkey": "proj.weight", "bennyguo": "proj.weight", "kxic": "projection.weight",
            "yuyang": "cc_projection.weight"}[layout] == wkey  # fmt: skip


def test_projection_rejects_bad_shapes():
    with pytest.raises(ValueError, match="one weight"):
        L.projection_from_state(
            {"a.weight": torch.zeros(4, 8), "b.weight": torch.zeros(4, 8), "a.bias": torch.zeros(4)}
        )
    with pytest.raises(ValueError, match=r"\[D, D\+4\]"):
        L.projection_from_state({"p.weight": torch.zeros(4, 7), "p.bias": torch.zeros(4)})


@pytest.mark.parametrize(("which", "size"), [("modelscope", (256, 256)), ("zeroscope", (320, 576))])
def test_video_forward(store, which, size):
    v = L.load_video(store, which=which)
    assert v.name == which and v.native_size == size
    assert _frozen(v.vae, v.unet, v.text_encoder)
    assert v.tokenizer.pad_token == "!"  # OpenCLIP pad token, as in the real ModelScope tokenizer
    with torch.no_grad():
        ids = v.tokenizer(
            ["a dog is running"], padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        emb = v.text_encoder(ids)[0]
        out = v.unet(torch.randn(1, 4, 3, 8, 8), torch.tensor([10]), encoder_hidden_states=emb).sample
    assert out.shape == (1, 4, 3, 8, 8)


def test_controlnet_forward(store):
    cn = L.load_controlnet(store)
    sd = L.load_sd(store)
    assert _frozen(cn)
    with torch.no_grad():
        emb = torch.randn(1, 77, 32)
        x = torch.randn(1, 4, 8, 8)
        t = torch.tensor([400])
        down, mid = cn(
            x, t, encoder_hidden_states=emb, controlnet_cond=torch.rand(1, 3, 64, 64), return_dict=False
        )
        out = sd.unet(x, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                      mid_block_additional_residual=mid).sample  # fmt: skip
    assert out.shape == (1, 4, 8, 8)


def test_depth_default_and_override(store, cache, monkeypatch):
    d = L.load_depth(store)
    assert (d.kind, d.image_size, d.mean, d.std, d.multiple_of, d.keep_aspect) == (
        "dpt", 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 32, False,
    )  # fmt: skip
    with torch.no_grad():
        assert d.model(torch.rand(1, 3, 32, 32)).predicted_depth.shape[0] == 1
    monkeypatch.setenv("ANIMATE124_MODEL_DEPTH", "depth-anything/Depth-Anything-V2-Small-hf")
    da = L.load_depth(ModelStore(cache_dir=cache, offline=True))
    assert da.kind == "depth_anything" and da.keep_aspect and da.mean == (0.485, 0.456, 0.406)
    with torch.no_grad():
        assert da.model(torch.rand(1, 3, 32, 32)).predicted_depth.shape == (1, 32, 32)


def test_matting_forward(store):
    m = L.load_matting(store)
    assert _frozen(m.segmenter, m.matte) and m.segmenter_image_size == 32
    with torch.no_grad():
        ids = m.segmenter_processor_or_tokenizer(["a cat"], padding=True, return_tensors="pt").input_ids
        logits = m.segmenter(input_ids=ids, pixel_values=torch.rand(1, 3, 32, 32)).logits
        assert logits.shape[-2:] == (32, 32)  # CLIPSeg decodes back to the input size
        alphas = m.matte(pixel_values=torch.rand(1, 4, 32, 32)).alphas
    assert alphas.shape == (1, 1, 32, 32) and alphas.min() >= 0 and alphas.max() <= 1


def test_clip_forward(store):
    model, tok = L.load_clip(store)
    with torch.no_grad():
        text = model.get_text_features(input_ids=tok(["a photo of a dog"], return_tensors="pt").input_ids)
        image = model.get_image_features(pixel_values=torch.rand(1, 3, 32, 32))
    text = getattr(text, "pooler_output", text)
    image = getattr(image, "pooler_output", image)
    assert text.shape == (1, 32) and image.shape == (1, 32)


def test_loader_missing_file_becomes_model_not_found(tmp_path):
    folder = build_tiny_repo("controlnet", tmp_path / "cn")
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"")  # present (passes resolve) but unreadable
    store = ModelStore(cache_dir=tmp_path / "empty", offline=True, overrides={"controlnet": str(folder)})
    with pytest.raises(ModelNotFoundError, match="role 'controlnet'") as info:
        L.load_controlnet(store)
    assert "animate124 models download controlnet" in str(info.value)
