"""``animate124 doctor``: what this machine has (Python, torch, CUDA, GPU, accelerators, models)."""

from __future__ import annotations

import importlib.util
import platform
from typing import Any

from animate124.cli.common import Session, examples, guarded


def doctor_report(store: Any) -> list[tuple[str, str, bool | None]]:
    """Rows (name, value, ok) where ok is True, False (a problem) or None (optional, absent)."""
    rows: list[tuple[str, str, bool | None]] = []
    py_ok = tuple(int(x) for x in platform.python_version_tuple()[:2]) >= (3, 10)
    rows.append(("python", platform.python_version(), py_ok))
    try:
        import torch

        rows.append(("torch", torch.__version__, True))
        cuda = torch.cuda.is_available()
        rows.append(
            (
                "cuda",
                str(torch.version.cuda) if cuda else "not available (CPU only: use --preset tiny)",
                cuda or None,
            )
        )
        if cuda:
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                rows.append(
                    (f"gpu {i}", f"{p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}", True)
                )
    except ImportError:
        rows.append(("torch", "not installed", False))
    for pkg in ("diffusers", "transformers", "huggingface_hub"):
        try:
            import importlib.metadata as md

            rows.append((pkg, md.version(pkg), True))
        except Exception:
            rows.append((pkg, "not installed", False))
    for opt, what in (
        ("triton", "fast grid encoder, fused VAE norms, run.compile_priors on a GPU"),
        ("tinycudann", "optional grid encoder"),
        ("xformers", "optional attention"),
    ):
        found = importlib.util.find_spec(opt) is not None
        rows.append(
            (
                opt,
                f"installed ({what})" if found else f"not installed ({what})",
                True if found else None,
            )
        )
    rows.append(("model cache", str(store.cache_dir), True))
    for row in store.describe():
        rows.append(
            (
                f"model {row['role']}",
                f"{row['repo']} ({'cached' if row.get('cached') else 'not cached'})",
                True if row.get("cached") else None,
            )
        )
    return rows


@guarded("cache_dir")
def doctor(s: Session) -> None:
    """Report Python, torch, CUDA, GPU memory, optional accelerators and which models are cached."""
    from animate124.cli.models import store_for

    for key, value, ok in doctor_report(store_for(s)):
        mark = "[green]✓[/green]" if ok is True else ("[yellow]-[/yellow]" if ok is None else "[red]✗[/red]")
        s.show(f"{mark} {key}: {value}")


DOCTOR_EPILOG = examples("animate124 doctor", "animate124 doctor --cache-dir /data/models")
