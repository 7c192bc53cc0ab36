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
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from animate124.errors import InputError

if TYPE_CHECKING:
    from transformers import CLIPTextModel, CLIPTokenizer

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


#: CLIP's pre-tokenizer (letter runs, single digits, punctuation runs): every piece is at least one BPE token.
_CLIP_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE | re.UNICODE)
#: CLIP's text encoders read 77 positions: the start marker, 75 tokens of text, the end marker.
CLIP_POSITIONS = 77


def token_count(tokenizer: CLIPTokenizer | None, prompt: str) -> int:
    """Tokens of ``prompt`` between the start and end markers (no truncation); without a tokenizer, a lower
    bound (CLIP's pre-tokenizer pieces)."""
    if tokenizer is None:
        return len(_CLIP_PIECES.findall(prompt))
    return len(tokenizer(prompt, add_special_tokens=False, truncation=False).input_ids)


def token_limit(tokenizer: CLIPTokenizer | None) -> int:
    """Tokens of text the encoder reads: its positions less the start and end markers (75 for CLIP)."""
    return int(getattr(tokenizer, "model_max_length", CLIP_POSITIONS) or CLIP_POSITIONS) - 2


def check_prompt_length(tokenizer: CLIPTokenizer | None, prompt: str, what: str = "prompt") -> None:
    """Raise InputError when ``prompt`` is longer than the text encoder reads (the rest would be cut off).

    The one wording of this limit, used by the pre-flight (before any work, with the tokenizer of the
    model that reads the prompt) and by the priors themselves: "the static prompt is 80 tokens long; the
    text encoder reads at most 75". Without a tokenizer the count is a lower bound ("at least 80").
    """
    n = token_count(tokenizer, prompt)
    limit = token_limit(tokenizer)
    if n > limit:
        how = "" if tokenizer is not None else "at least "
        hint = "shorten it to one sentence (about 40 words at most); the rest would be cut off"
        if getattr(tokenizer, "vocab_size", 1 << 30) < 1000:  # the tiny models' byte-level vocabulary
            hint = "shorten it: the tiny models' tokenizer spells most words letter by letter"
        raise InputError(f"the {what} is {how}{n} tokens long; the text encoder reads at most {limit}", hint)


def add_learned_token(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, token: str, vector: torch.Tensor
) -> int:
    """Add (or overwrite) a learned textual-inversion token; returns its id.

    Same effect as diffusers' ``load_textual_inversion`` for a one-vector token: the tokenizer gets the
    token, the input embedding matrix grows by one row holding ``vector`` ([D], cast to the matrix dtype).
    """
    weight = input_embedding_matrix(text_encoder)
    vec = torch.as_tensor(vector).detach().flatten()
    if vec.numel() != weight.shape[1]:
        raise InputError(
            f"learned token {token!r} has dimension {vec.numel()}, the text encoder expects {weight.shape[1]}",
            "the token was learned for a different text encoder (SD 1.5 uses 768)",
        )
    if token not in tokenizer.get_vocab():
        tokenizer.add_tokens(token)
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int):
        raise InputError(f"the tokenizer did not map {token!r} to one id")
    if token_id >= weight.shape[0]:
        try:  # mean_resizing=False: no random init (the row is overwritten below), no log line
            text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        except TypeError:  # transformers < 4.46
            text_encoder.resize_token_embeddings(len(tokenizer))
        weight = input_embedding_matrix(text_encoder)
    with torch.no_grad():
        weight[token_id] = vec.to(device=weight.device, dtype=weight.dtype)
    return token_id


def input_embedding_matrix(text_encoder: CLIPTextModel) -> torch.Tensor:
    """The token-embedding matrix ``[vocab, D]`` of a CLIP text encoder (the Parameter itself)."""
    emb = text_encoder.get_input_embeddings()
    if not isinstance(emb, torch.nn.Embedding):
        raise TypeError(f"expected an nn.Embedding as the text encoder's input embeddings, got {type(emb)}")
    return emb.weight


class TextEmbeddingCache:
    """CLIP text embeddings ``[1, L, D]`` computed once per prompt string (SPEC 3.7-7).

    Uses ``last_hidden_state`` of the text encoder on ``max_length``-padded ids, as upstream's
    ``get_text_embeds``. Learned tokens added through :meth:`add_learned_token` clear the cache.
    """

    def __init__(self, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.placeholder: str | None = None
        self._cache: dict[str, torch.Tensor] = {}
        #: where the embeddings are used: the encoder's device when the prior was built (it may be parked
        #: on the CPU afterwards, :func:`animate124.guidance.common.park_encoders`)
        self.device = next(text_encoder.parameters()).device

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
        """Embedding ``[1, L, D]`` of one prompt (in the encoder's dtype, on :attr:`device`)."""
        p = self.resolve(prompt)
        if p not in self._cache:
            tok = self.tokenizer
            ids = tok(
                p,
                padding="max_length",
                max_length=int(getattr(tok, "model_max_length", 77)),
                truncation=True,
                return_tensors="pt",
            ).input_ids
            dev = next(self.text_encoder.parameters()).device
            self._cache[p] = self.text_encoder(ids.to(dev))[0].detach().to(self.device)
        return self._cache[p]

    def encode_views(self, prompt: str) -> torch.Tensor:
        """Stacked view embeddings ``[3, L, D]`` for (front, side, back)."""
        p = self.resolve(prompt)
        return torch.cat([self.encode(v) for v in view_prompts(p)], dim=0)


class PromptSet:
    """The text of one prior: a positive prompt (plain and, with ``view_text``, its front/side/back
    variants) and a plain negative, encoded once by :meth:`set_prompt` (SPEC 3.7-7).

    ``negative(n)`` is the plain negative for every view; ``positive(n, azimuth)`` interpolates the view
    variants per azimuth (module docstring), or repeats the plain prompt without an azimuth.
    """

    def __init__(
        self,
        tokenizer: CLIPTokenizer,
        text_encoder: CLIPTextModel,
        *,
        prompt: str,
        negative_prompt: str,
        view_text: bool,
        learned_token: tuple[str, torch.Tensor] | None = None,
    ) -> None:
        self.cache = TextEmbeddingCache(tokenizer, text_encoder)
        self.negative_prompt = negative_prompt
        self.view_text = bool(view_text)
        if learned_token is not None:
            self.cache.add_learned_token(*learned_token)
        self.prompt = prompt
        self._pos = self._neg = self._views = torch.empty(0)
        self.set_prompt(prompt)

    def set_prompt(self, prompt: str) -> None:
        """Encode ``prompt`` (its view variants too with ``view_text``) and the negative; InputError if
        a text is longer than the tokenizer takes or holds ``<token>`` without a learned token. Nothing
        changes when it raises."""
        pos = self.cache.encode(prompt)
        views = self.cache.encode_views(prompt) if self.view_text else pos[:0]
        neg = self.cache.encode(self.negative_prompt)
        self.prompt, self._pos, self._views, self._neg = prompt, pos, views, neg

    def add_learned_token(self, token: str, vector: torch.Tensor) -> None:
        """Load a textual-inversion vector (``<token>`` then means ``token``) and re-encode the prompt."""
        self.cache.add_learned_token(token, vector)
        self.set_prompt(self.prompt)

    def encode(self, text: str) -> torch.Tensor:
        """``[1, L, D]`` embedding of another text through the same encoder (e.g. ControlNet's own)."""
        return self.cache.encode(text)

    def negative(self, n: int) -> torch.Tensor:
        """``[n, L, D]``: the plain negative, whatever the view (SPEC 3.7-7)."""
        return self._neg.expand(n, -1, -1)

    def positive(self, n: int, azimuth_deg: torch.Tensor | None = None) -> torch.Tensor:
        """``[n, L, D]``: the plain prompt, or with ``azimuth_deg [n]`` (absolute, degrees) the
        front/side/back embeddings interpolated per azimuth."""
        if azimuth_deg is None:
            return self._pos.expand(n, -1, -1)
        if not self.view_text:
            raise InputError("this prior was built without view-dependent text", "pass view_text=True")
        az = torch.as_tensor(azimuth_deg, dtype=torch.float64).flatten()
        if az.numel() != n:
            raise InputError(f"expected {n} azimuths, got {az.numel()}")
        return interpolate_views(self._views, az)
