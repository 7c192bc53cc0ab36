"""The tiny models' CLIP tokenizer: a byte-level BPE vocabulary written in the legacy file layout.

GPT-2 ``bytes_to_unicode`` (256 characters and their 256 ``</w>`` forms) plus merges that make a few
common words single tokens (ecosystem.md 3.2), so textual-inversion initialiser words such as "panda"
are one token, exactly as with the real CLIP tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Words that must encode as one token each (tests, textual-inversion initialisers, tiny prompts).
TINY_WORDS = (
    "a", "an", "the", "of", "and", "is", "in", "on", "photo", "panda", "cat", "dog", "hat", "view",
    "front", "side", "back", "dancing", "running", "jumping", "walking", "person", "object", "bird",
    "horse", "car", "toy", "kangaroo", "unicorn", "astronaut", "with", "at", "to", "playing",
    "high", "quality", "background", "render", "video", "foreground",
)  # fmt: skip


def write_json(path: Path, obj: Any) -> None:
    """Write a config/tokenizer JSON file (parents created, keys sorted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word (pure Python): repeatedly merge the lowest-ranked adjacent pair."""
    tokens = list(word[:-1]) + [word[-1] + "</w>"]
    while len(tokens) > 1:
        pairs = [
            (ranks.get((a, b), 1 << 30), i)
            for i, (a, b) in enumerate(zip(tokens[:-1], tokens[1:], strict=True))
        ]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        tokens = tokens[:i] + [tokens[i] + tokens[i + 1]] + tokens[i + 2 :]
    return tokens


def tiny_vocab_and_merges(words: Iterable[str] = TINY_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-style BPE vocabulary: 256 byte chars, their ``</w>`` forms, merges that make each word of
    ``words`` a single ``word</w>`` token, then ``<|startoftext|>`` and ``<|endoftext|>`` last, as in
    the real vocab.

    For each word the current BPE segmentation (under the merges so far) is joined left to right, so
    earlier words' merges cannot split a later word: every word ends as one token."""
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for w in words:
        pieces = _bpe(w, ranks)
        left = pieces[0]
        for right in pieces[1:]:
            pair = (left, right)
            left = left + right
            if pair not in ranks:
                ranks[pair] = len(merges)
                merges.append(pair)
            vocab.setdefault(left, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def _added_token(content: str) -> dict[str, Any]:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
            "rstrip": False, "single_word": False}  # fmt: skip


def write_tiny_tokenizer(
    folder: Path, *, pad_token: str = "<|endoftext|>", tokenizer_json: bool = False
) -> int:
    """Write the legacy CLIP tokenizer files (vocab.json, merges.txt with ``#version: 0.2``,
    special_tokens_map.json, tokenizer_config.json with AddedToken dicts). Returns the vocab size.

    ``tokenizer_json`` also writes a fast ``tokenizer.json`` (as openai/clip-vit-large-patch14 has)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    plain = {k: v for k, v in _added_token("").items() if k != "__type"}
    write_json(
        folder / "special_tokens_map.json",
        {
            "bos_token": {**plain, "content": "<|startoftext|>"},
            "eos_token": {**plain, "content": "<|endoftext|>"},
            "pad_token": pad_token,
            "unk_token": {**plain, "content": "<|endoftext|>"},
        },
    )
    write_json(
        folder / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "bos_token": _added_token("<|startoftext|>"),
            "do_lower_case": True,
            "eos_token": _added_token("<|endoftext|>"),
            "errors": "replace",
            "model_max_length": 77,
            "pad_token": pad_token,
            "special_tokens_map_file": "./special_tokens_map.json",
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": _added_token("<|endoftext|>"),
        },
    )
    if tokenizer_json:
        from transformers import CLIPTokenizer

        tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token=pad_token)
        tok.backend_tokenizer.save(str(folder / "tokenizer.json"))
    return len(vocab)
