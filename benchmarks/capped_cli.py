"""The ``animate124`` command on a GPU capped to a smaller card's memory (issue 12: "fits a 24 GB card"),
optionally recording its wall time and peak memory (issue 30: the output commands at paper scale).

``torch.cuda.set_per_process_memory_fraction`` makes the caching allocator refuse to hold more than the cap,
so the process runs out of memory where a card of that size would (the allocator frees its cache and retries
first, as it does on a real card). Everything after the options is the CLI's own command line:

    python benchmarks/capped_cli.py --gib 24 run-all examples/toy.png "a panda is dancing" --until refine ...
    python benchmarks/capped_cli.py --gib 16 refine -p runs/toy --force --set refine.iters=30
    python benchmarks/capped_cli.py --gib 22.35 --record out.json render --orbit -p runs/toy

``--record FILE`` writes, when the command exits (also on an error exit), a JSON object: the command line,
its exit code, wall seconds (process start of the command to exit, model loading included), the CUDA
allocator's peak allocated and reserved GiB, and the process's peak resident host memory (``ru_maxrss``).
Without CUDA the cap is skipped (with a message) and the command runs as it is: a CPU smoke test of this
script. What it does not emulate: the memory other processes or the display hold on a real card, and the
CUDA context itself (about 0.5 GiB, outside the allocator's count), so leave that much margin.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

USAGE = "usage: python benchmarks/capped_cli.py --gib GIB [--record FILE] <animate124 arguments>"


def cap(gib: float) -> str:
    """Cap this process's CUDA allocator at ``gib`` GiB; returns what it did."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA: the cap is not applied"
    total = torch.cuda.get_device_properties(0).total_memory
    frac = min(1.0, gib * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(frac, 0)
    return f"CUDA allocator capped at {gib:g} GiB ({frac:.4f} of {total / 2**30:.1f} GiB)"


def usage(argv: list[str], seconds: float, code: Any, gib: float) -> dict[str, Any]:
    """What ``--record`` writes: the command, its exit code, seconds and peak GPU / host memory."""
    import torch

    rec: dict[str, Any] = {"argv": argv, "exit_code": code, "seconds": round(seconds, 3), "cap_gib": gib}
    rec["peak_host_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, 3)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rec["card"] = torch.cuda.get_device_name(0)
        rec["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        rec["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    else:
        rec["card"], rec["peak_gib"], rec["peak_reserved_gib"] = "cpu", None, None
    return rec


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "--gib":
        raise SystemExit(USAGE)
    gib, args = float(args[1]), args[2:]
    record: Path | None = None
    if args[:1] == ["--record"]:
        if len(args) < 2:
            raise SystemExit(USAGE)
        record, args = Path(args[1]), args[2:]
    # first: importing the CLI sets its CUDA allocator options (expandable segments), which torch reads once,
    # when the cap below starts the allocator
    from animate124.cli.app import app

    print(cap(gib), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    code: Any = 0
    try:
        app(args=args, prog_name="animate124")
    except SystemExit as e:  # typer always exits
        code = e.code
        raise
    finally:
        if record is not None:
            record.write_text(json.dumps(usage(args, time.perf_counter() - t0, code, gib), indent=1) + "\n")


if __name__ == "__main__":
    main()
