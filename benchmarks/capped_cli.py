"""The ``animate124`` command on a GPU capped to a smaller card's memory (issue 12: "fits a 24 GB card").

``torch.cuda.set_per_process_memory_fraction`` makes the caching allocator refuse to hold more than the cap,
so the process runs out of memory where a card of that size would (the allocator frees its cache and retries
first, as it does on a real card). Everything after the options is the CLI's own command line:

    python benchmarks/capped_cli.py --gib 24 run-all examples/toy.png "a panda is dancing" --until refine ...
    python benchmarks/capped_cli.py --gib 16 refine -p runs/toy --force --set refine.iters=30

Without CUDA the cap is skipped (with a message) and the command runs as it is: a CPU smoke test of this
script. What it does not emulate: the memory other processes or the display hold on a real card, and the
CUDA context itself (about 0.5 GiB, outside the allocator's count), so leave that much margin.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cap(gib: float) -> str:
    """Cap this process's CUDA allocator at ``gib`` GiB; returns what it did."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA: the cap is not applied"
    total = torch.cuda.get_device_properties(0).total_memory
    frac = min(1.0, gib * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(frac, 0)
    return f"CUDA allocator capped at {gib:g} GiB ({frac:.4f} of {total / 2**30:.1f} GiB)"


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "--gib":
        raise SystemExit("usage: python benchmarks/capped_cli.py --gib GIB <animate124 arguments>")
    # first: importing the CLI sets its CUDA allocator options (expandable segments), which torch reads once,
    # when the cap below starts the allocator
    from animate124.cli.app import app

    print(cap(float(args[1])), file=sys.stderr, flush=True)

    app(args=args[2:], prog_name="animate124")


if __name__ == "__main__":
    main()
