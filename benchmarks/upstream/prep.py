"""Small steps of the upstream harness that need no GPU: apply ``offline.patch``, move a checkpoint's step.

``apply`` applies a unified diff (as ``git diff`` writes it: no renames, no binary files) to a source tree,
matching every hunk's context and removed lines exactly where the hunk says (no fuzz, no search; only trailing
whitespace is not compared), so that a changed upstream fails loudly instead of being patched somewhere else.
It needs neither git nor patch (the GPU machine may have neither).

``rebase`` sets the global step and epoch stored in an upstream NeRF checkpoint. Upstream's stages run on
one cumulative step counter (SPEC 0): the dynamic stage starts at the static checkpoint's step 5000 and the
refinement at 15000, and everything keyed on the step (reference-view period, occupancy updates, entropy ramp,
grid-level masking) reads the cumulative value. The harness runs each stage for a few steps only, so it moves
the checkpoint's counter to where the paper's schedule would have left it: the next stage then runs exactly
the steps it runs in the paper's schedule.

    python3 benchmarks/upstream/prep.py apply SRC benchmarks/upstream/offline.patch
    python3 benchmarks/upstream/prep.py rebase CKPT --step 5000 --epoch 50
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class PatchError(RuntimeError):
    """A hunk's context or removed lines are not where the patch says."""


def _files(patch: str) -> list[tuple[str, list[list[str]]]]:
    """``[(path, hunks)]`` of a ``git diff``; each hunk is its body lines (prefix kept)."""
    out: list[tuple[str, list[list[str]]]] = []
    lines = patch.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("+++ "):
            path = line[4:].strip()
            out.append((path[2:] if path.startswith("b/") else path, []))
        elif line.startswith("@@"):
            m = _HUNK.match(line)
            if m is None or not out:
                raise PatchError(f"bad hunk header {line!r}")
            old_left, new_left = int(m.group(2) or 1), int(m.group(4) or 1)
            hunk = [line]
            while old_left > 0 or new_left > 0:  # the header's line counts bound the hunk's body
                body = lines[i] if i < len(lines) else ""
                body = body or " "  # an empty context line whose space was stripped
                i += 1
                if body[0] == "\\":  # "\ No newline at end of file"
                    continue
                if body[0] not in " +-":
                    raise PatchError(f"{out[-1][0]}: hunk {line} ends early")
                old_left -= body[0] in " -"
                new_left -= body[0] in " +"
                hunk.append(body)
            out[-1][1].append(hunk)
    return out


def apply_patch(src: Path, patch_text: str) -> list[str]:
    """Apply ``patch_text`` to the tree ``src``; returns the files changed. Raises :class:`PatchError`."""
    changed = []
    for rel, hunks in _files(patch_text):
        path = Path(src) / rel
        text = path.read_text()
        keep_newline = text.endswith("\n")
        lines = text.split("\n")[:-1] if keep_newline else text.split("\n")
        offset = 0
        for hunk in hunks:
            m = _HUNK.match(hunk[0])
            if m is None:
                raise PatchError(f"{rel}: bad hunk header {hunk[0]!r}")
            start = int(m.group(1)) - 1 + offset if int(m.group(2) or 1) else int(m.group(1)) + offset
            old = [h[1:] for h in hunk[1:] if h[:1] in (" ", "-")]
            here = lines[start : start + len(old)]
            # trailing whitespace is not compared (an editor may strip it from the patch file)
            if [x.rstrip() for x in here] != [x.rstrip() for x in old]:
                raise PatchError(
                    f"{rel}: hunk {hunk[0]} does not match the source (is this upstream d546941?)"
                )
            new, i = [], 0
            for h in hunk[1:]:
                if h[0] == "+":
                    new.append(h[1:])
                else:  # context keeps the source's own line; a removed line is dropped
                    if h[0] == " ":
                        new.append(here[i])
                    i += 1
            lines[start : start + len(old)] = new
            offset += len(new) - len(old)
        path.write_text("\n".join(lines) + ("\n" if keep_newline else ""))
        changed.append(rel)
    return changed


def rebase(ckpt: Path, step: int, epoch: int) -> tuple[int, int]:
    """Set ``global_step`` / ``epoch`` of an upstream checkpoint in place; returns the old pair."""
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=False)  # upstream pickles plain dicts
    old = (int(state["global_step"]), int(state["epoch"]))
    state["global_step"], state["epoch"] = int(step), int(epoch)
    torch.save(state, ckpt)
    return old


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("apply", help="apply a patch to a source tree")
    a.add_argument("src", type=Path)
    a.add_argument("patch", type=Path)
    r = sub.add_parser("rebase", help="set an upstream checkpoint's global step and epoch")
    r.add_argument("ckpt", type=Path)
    r.add_argument("--step", type=int, required=True)
    r.add_argument("--epoch", type=int, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "apply":
        for rel in apply_patch(args.src, args.patch.read_text()):
            print(f"patched {rel}")
    else:
        old = rebase(args.ckpt, args.step, args.epoch)
        print(f"{args.ckpt}: global step {old[0]} -> {args.step}, epoch {old[1]} -> {args.epoch}")


if __name__ == "__main__":
    main()
