"""Text conditioning: prompt checks, view-dependent prompts, learned tokens, cached CLIP text embeddings.

View-dependent text (SPEC 3.7-7): the prompt gets ", front view" / ", side view" / ", back view" and
the embedding is interpolated by the camera azimuth a ∈ [−180, 180):

* |a| < 90:  r = 1 − |a|/90,        z = r·front + (1−r)·side
* otherwise: r = 1 − (|a|−90)/90,   z = r·side  + (1−r)·back

Only the positive prompt is decorated and interpolated. The negative is encoded plain and used for
every view: upstream interpolates three copies of the same plain negative embedding (SPEC 3.7-7,
"the negatives are interpolated too but are identical"). Decorating the negative with the view words
would cancel them in ``ε_c − ε_u`` under CFG and switch view-dependent prompting off.
Overhead/bottom prompts are never used upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from animate124.errors import InputError

log = logging.getLogger(__name__)

TOKEN_TAG = "<token>"
VIEW_SUFFIXES: tuple[str, str, str] = ("front view", "side view", "back view")


def view_prompts(prompt: str) -> list[str]:
    """``["{prompt}, front view", "{prompt}, side view", "{prompt}, back view"]`` (upstream's format).

    For positive prompts only: the negative prompt is never decorated (module docstring).
    """
    return [f"{prompt}, {s}" for s in VIEW_SUFFIXES]


def view_weights(azimuth_deg: torch.Tensor | float | Iterable[float]) -> torch.Tensor:
    """Interpolation weights ``[N, 3]`` over (front, side, back) for azimuths in degrees (SPEC 3.7-7).

    The azimuth is first wrapped to [−180, 180). Each row sums to 1.
    """
    a = torch.as_tensor(azimuth_deg, dtype=torch.float64).flatten()
    a = torch.remainder(a + 180.0, 360.0) - 180.0
    aa = a.abs()
    w = torch.zeros(a.numel(), 3, dtype=torch.float64)
    front = aa < 90.0
    r1 = 1.0 - aa / 90.0
    r2 = 1.0 - (aa - 90.0) / 90.0
    w[:, 0] = torch.where(front, r1, torch.zeros_like(r1))
    w[:, 1] = torch.where(front, 1.0 - r1, r2)
    w[:, 2] = torch.where(front, torch.zeros_like(r2), 1.0 - r2)
    return w


def interpolate_views(
    embeds: torch.Tensor, azimuth_deg: torch.Tensor | float | Iterable[float]
) -> torch.Tensor:
    """Blend view embeddings ``[3, L, D]`` (front, side, back) per azimuth -> ``[N, L, D]``."""
    w = view_weights(azimuth_deg).to(device=embeds.device, dtype=torch.float32)
    out = torch.einsum("nv,vld->nld", w, embeds.float())
    return out.to(embeds.dtype)


def replace_token(prompt: str, placeholder: str | None) -> str:
    """Replace the literal ``<token>`` in a prompt by the learned placeholder (SPEC 2, ``token_replace``).

    Raises InputError if the prompt contains ``<token>`` but no placeholder was learned.
    """
    if TOKEN_TAG not in prompt:
        return prompt
    if not placeholder:
        raise InputError(
            f"the prompt {prompt!r} contains {TOKEN_TAG} but no textual-inversion token is loaded",
            "run the inversion stage first, or remove <token> from the prompt",
        )
    return prompt.replace(TOKEN_TAG, placeholder)


def token_count(tokenizer: object, prompt: str) -> int:
    """Number of tokens of ``prompt`` including the start/end tokens (no truncation)."""
    return len(tokenizer(prompt, truncation=False).input_ids)  # type: ignore[operator]


def check_prompt_length(tokenizer: object, prompt: str) -> None:
    """Raise InputError if ``prompt`` does not fit the tokenizer's limit (77 tokens for CLIP)."""
    limit = int(getattr(tokenizer, "model_max_length", 77))
    n = token_count(tokenizer, prompt)
    if n > limit:
        raise InputError(
            f"the prompt is {n} tokens long; the text encoder takes at most {limit} (prompt: {prompt[:60]!r}...)",
            "shorten the prompt",
        )


def add_learned_token(
    tokenizer: object, text_encoder: torch.nn.Module, token: str, vector: torch.Tensor
) -> int:
    """Add (or overwrite) a learned textual-inversion token; returns its id.

    Same effect as diffusers' ``load_textual_inversion`` for a one-vector token: the tokenizer gets the
    token, the input embedding matrix grows by one row holding ``vector`` ([D], cast to the matrix dtype).
    """
    emb = text_encoder.get_input_embeddings()
    vec = torch.as_tensor(vector).detach().flatten()
    if vec.numel() != emb.weight.shape[1]:
        raise InputError(
            f"learned token {token!r} has dimension {vec.numel()}, the text encoder expects {emb.weight.shape[1]}",
            "the token was learned for a different text encoder (SD 1.5 uses 768)",
        )
    vocab = tokenizer.get_vocab()  # type: ignore[attr-defined]
    if token not in vocab:
        tokenizer.add_tokens(token)  # type: ignore[attr-defined]
    token_id = int(tokenizer.convert_tokens_to_ids(token))  # type: ignore[attr-defined]
    if token_id >= emb.weight.shape[0]:
        try:  # mean_resizing=False: no random init (the row is overwritten below), no log line
            text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # type: ignore[arg-type, operator]
        except TypeError:  # transformers < 4.46
            text_encoder.resize_token_embeddings(len(tokenizer))  # type: ignore[arg-type, operator]
        emb = text_encoder.get_input_embeddings()
    with torch.no_grad():
        emb.weight[token_id] = vec.to(device=emb.weight.device, dtype=emb.weight.dtype)
    return token_id


class TextEmbeddingCache:
    """CLIP text embeddings ``[1, L, D]`` computed once per prompt string (SPEC 3.7-7).

    Uses ``last_hidden_state`` of the text encoder on ``max_length``-padded ids, as upstream's
    ``get_text_embeds``. Learned tokens added through :meth:`add_learned_token` clear the cache.
    """

    def __init__(self, tokenizer: object, text_encoder: torch.nn.Module) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.placeholder: str | None = None
        self._cache: dict[str, torch.Tensor] = {}

    def add_learned_token(self, token: str, vector: torch.Tensor) -> None:
        """Register a learned token; ``<token>`` in later prompts is replaced by it."""
        add_learned_token(self.tokenizer, self.text_encoder, token, vector)
        self.placeholder = token
        self._cache.clear()

    def resolve(self, prompt: str) -> str:
        """Replace ``<token>`` and check the length; returns the prompt that will be encoded."""
        p = replace_token(prompt, self.placeholder)
        check_prompt_length(self.tokenizer, p)
        return p

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        """Embedding ``[1, L, D]`` of one prompt (in the encoder's dtype and device)."""
        p = self.resolve(prompt)
        if p not in self._cache:
            tok = self.tokenizer
            ids = tok(  # type: ignore[operator]
                p,
                padding="max_length",
                max_length=int(getattr(tok, "model_max_length", 77)),
                truncation=True,
                return_tensors="pt",
            ).input_ids
            dev = next(self.text_encoder.parameters()).device
            self._cache[p] = self.text_encoder(ids.to(dev))[0].detach()
        return self._cache[p]

    def encode_views(self, prompt: str) -> torch.Tensor:
        """Stacked view embeddings ``[3, L, D]`` for (front, side, back)."""
        p = self.resolve(prompt)
        return torch.cat([self.encode(v) for v in view_prompts(p)], dim=0)

    def embeddings(
        self,
        prompt: str,
        n: int,
        azimuth_deg: torch.Tensor | float | Iterable[float] | None = None,
        view_dependent: bool = False,
    ) -> torch.Tensor:
        """``[n, L, D]`` conditioning: plain prompt repeated, or view-interpolated per azimuth."""
        if view_dependent:
            if azimuth_deg is None:
                raise InputError("view-dependent text needs the camera azimuth", "pass azimuth_deg=")
            az = torch.as_tensor(azimuth_deg, dtype=torch.float64).flatten()
            if az.numel() == 1:
                az = az.expand(n)
            elif az.numel() != n:
                az = az.repeat_interleave(n // az.numel()) if n % az.numel() == 0 else az
            if az.numel() != n:
                raise InputError(f"expected 1 or {n} azimuths, got {az.numel()}")
            return interpolate_views(self.encode_views(prompt), az)
        return self.encode(prompt).expand(n, -1, -1)
