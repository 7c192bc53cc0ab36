"""``run.park_encoders``: the priors' text and image encoders leave the training device once the prompts
and the reference are embedded, their VAE decoders (never used by score distillation) too, and nothing the
training computes changes.

The strongest check available on a CPU: park the encoders on the ``meta`` device, which holds no data. Any
use of them in a guidance call would fail (meta tensors mixed with real ones) or give meta outputs; the
calls must instead match the unparked priors bit for bit.
"""

from __future__ import annotations

import torch
from helpers_guidance import assert_same_prior_output, make_controlnet, make_sd, make_video, make_zero123

from animate124.guidance.common import park_encoders


def _priors(store):
    from animate124.models.loaders import load_controlnet, load_sd, load_video, load_zero123

    gen = torch.Generator().manual_seed(5)
    ref = torch.rand(1, 3, 32, 32, generator=gen)
    return {
        "sd": lambda: make_sd(load_sd(store)),
        "zero123": lambda: make_zero123(load_zero123(store), reference=ref),
        "video": lambda: make_video(load_video(store)),
        "controlnet": lambda: make_controlnet(load_sd(store), load_controlnet(store)),
    }


def test_parked_encoders_change_no_guidance_output(store) -> None:
    for name, build in _priors(store).items():

        def park(prior, name=name):
            park_encoders(prior, "meta")
            enc = prior.image_encoder if name == "zero123" else prior.text.cache.text_encoder
            assert next(enc.parameters()).device.type == "meta", name
            for part in (prior.vae.decoder, prior.vae.post_quant_conv):  # never used by SDS
                assert {p.device.type for p in part.parameters()} == {"meta"}, name
            assert next(prior.vae.encoder.parameters()).device.type == "cpu"

        assert_same_prior_output(build, park, name)


def test_reembedding_after_parking_lands_on_the_training_device(store) -> None:
    """A later set_prompt / set_reference runs on the parked encoder (here: the CPU) and gives the same
    embeddings as before parking."""
    priors = _priors(store)
    sd = priors["sd"]()
    before = sd.text.positive(1).clone()
    park_encoders(sd, "cpu")
    sd.set_prompt("a dog")
    sd.set_prompt("a cat")  # make_sd's prompt
    assert torch.equal(sd.text.positive(1), before) and sd.text.positive(1).device == before.device
    z = priors["zero123"]()
    emb = z.clip_embeds.clone()
    park_encoders(z, "cpu")
    z.set_reference(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(z.clip_embeds, emb)


def test_config_switch_reaches_the_built_priors(store, monkeypatch) -> None:
    from animate124.config import resolve_config
    from animate124.stages import build

    seen = []
    monkeypatch.setattr(
        "animate124.guidance.common.park_encoders", lambda prior, device="cpu": seen.append(device) or prior
    )
    monkeypatch.setattr(build, "_store", lambda cfg: store)
    for value in (True, False):
        cfg = resolve_config("tiny", sets=[f"run.park_encoders={str(value).lower()}"])
        build.build_video_guidance(cfg, torch.device("cpu"), "a cat is dancing")
    assert seen == ["cpu"]
    assert resolve_config().run.park_encoders is True  # on in paper: the same embeddings


def test_priors_without_encoders_are_left_alone() -> None:
    class Bare:
        pass

    bare = Bare()
    assert park_encoders(bare) is bare
