"""Put back the library names upstream Animate124 needs and the device's newer libraries removed.

Upstream was written for torch 2.0.1, diffusers 0.20.2, transformers 4.3x and huggingface_hub 0.1x. The
harness runs it with diffusers 0.20.2 (carried) on the GPU machine's torch 2.11, transformers 5.17 and
huggingface_hub 1.33. ``offline.patch`` makes ``main.py`` and ``textual_inversion.py`` import this module
first. Nothing here computes anything: every shim is a name that moved or was removed.

* ``USE_FLAX=0`` / ``USE_TF=0``: the device has jax and flax, so diffusers 0.20.2 would import its Flax
  pipelines, which import transformers' Flax classes (removed in transformers 5).
* ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``: torch 2.0's ``torch.load`` default (``weights_only=False``), which
  upstream's checkpoints (pickled dicts of tensors, lists and floats) were written for.
* huggingface_hub 1.x removed ``constants.hf_cache_home``, ``HfFolder``, ``cached_download`` and
  ``Repository`` (imported at module level by diffusers 0.20.2 and by the textual-inversion script; only
  used for downloads and pushes, which the benchmark never does: the models are local folders).
* transformers 5 removed ``transformers.utils.FLAX_WEIGHTS_NAME`` (a file name constant diffusers 0.20.2
  imports) and the ``CLIPFeatureExtractor`` / ``DPTFeatureExtractor`` aliases of the image processors.
* transformers 5's ``CLIPTokenizer`` is no longer a ``PreTrainedTokenizer`` (now the pure-Python tokenizers'
  base) but a ``PreTrainedTokenizerBase``; diffusers 0.20.2's ``load_textual_inversion`` (the refinement
  stage's ``<token>``) refuses any other tokenizer, so its type check is pointed at the common base class.
* transformers 5's ``CLIPTextModel`` holds ``embeddings`` / ``encoder`` / ``final_layer_norm`` itself, no
  longer inside a ``text_model`` (the textual-inversion script freezes ``text_encoder.text_model.encoder``
  etc.): ``text_model`` is given back as a property that returns the model itself.
* transformers 5 sets up a model in ``post_init()``, which diffusers 0.20.2's ``StableDiffusionSafetyChecker``
  (a transformers model that SD 1.5's pipeline loads, never runs in training) does not call: its ``__init__``
  is wrapped to call it.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("USE_FLAX", "0")
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import huggingface_hub  # noqa: E402
import huggingface_hub.constants  # noqa: E402
import transformers  # noqa: E402
import transformers.utils  # noqa: E402


class HfFolder:
    """huggingface_hub < 0.26's token holder (the TI script reads a token only to push to the Hub)."""

    @staticmethod
    def get_token() -> str | None:
        return huggingface_hub.get_token()


class Repository:
    """huggingface_hub < 1.0's git-based repository class: only ``--push_to_hub`` uses it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("huggingface_hub.Repository is gone; the benchmark never pushes to the Hub")


def cached_download(*args: object, **kwargs: object) -> str:
    """huggingface_hub < 0.26's download helper: only diffusers' remote custom-pipeline code uses it."""
    raise RuntimeError("cached_download is gone from huggingface_hub; the benchmark loads local folders")


def install() -> None:
    """Add the missing names (idempotent)."""
    consts = huggingface_hub.constants
    if not hasattr(consts, "hf_cache_home"):
        consts.hf_cache_home = consts.HF_HOME
    for name, value in (
        ("HfFolder", HfFolder),
        ("Repository", Repository),
        ("cached_download", cached_download),
    ):
        if not hasattr(huggingface_hub, name):
            setattr(huggingface_hub, name, value)
    for name, value in (
        ("FLAX_WEIGHTS_NAME", "flax_model.msgpack"),
        ("SAFE_WEIGHTS_NAME", "model.safetensors"),
        ("WEIGHTS_NAME", "pytorch_model.bin"),
    ):
        if not hasattr(transformers.utils, name):
            setattr(transformers.utils, name, value)
    for model in ("CLIP", "DPT"):
        # a lazy attribute: loading it replaces sys.modules["transformers"], so set the alias there after
        processor = getattr(transformers, f"{model}ImageProcessor")
        module = sys.modules["transformers"]
        if not hasattr(module, f"{model}FeatureExtractor"):
            setattr(module, f"{model}FeatureExtractor", processor)
    if not hasattr(transformers.CLIPTextModel, "text_model"):
        transformers.CLIPTextModel.text_model = property(lambda self: self)

    import diffusers.loaders
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    diffusers.loaders.PreTrainedTokenizer = transformers.PreTrainedTokenizerBase
    if not getattr(StableDiffusionSafetyChecker, "_a124_post_init", False):
        init = StableDiffusionSafetyChecker.__init__

        def __init__(self, config):  # noqa: N807
            init(self, config)
            self.post_init()

        StableDiffusionSafetyChecker.__init__ = __init__
        StableDiffusionSafetyChecker._a124_post_init = True


install()
