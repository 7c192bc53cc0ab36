"""Error types of the library, and the exit codes the CLI maps them to.

The library raises :class:`Animate124Error` subclasses carrying a message and a hint. Only the CLI
turns them into a red line plus hint and an exit code: each class says its own ``exit_code``
(:data:`EXIT_USAGE` for usage/config/input errors, :data:`EXIT_RUNTIME` for everything that went wrong
while working). See DESIGN.md, "Errors and output".

CUDA running out of memory becomes :class:`OutOfMemoryError` through :func:`oom_guard`, whose hint
names the settings that reduce memory; nothing matches error strings.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

#: Exit codes of the ``animate124`` command (documented in its ``--help`` and the README).
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM (cluster schedulers, Ray and `kill` send it on preemption)

#: The settings that lower GPU memory, named in every out-of-memory message.
MEMORY_HINT = (
    "first, with the same result (slower): --set raymarch.checkpoint_field=4000000; or try --preset low-vram, "
    "or lower one of: --set refine.image_size=512, --set dynamic.vae_grad_frames=4, "
    "--set raymarch.max_steps=512, --set raymarch.chunk=262144, --set invert.batch_size=4"
)


class Animate124Error(Exception):
    """Base error: ``message`` says what went wrong, ``hint`` what the user can do about it."""

    exit_code: int = EXIT_RUNTIME

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(Animate124Error):
    """Invalid configuration, override, preset or command-line value."""

    exit_code = EXIT_USAGE


class InputError(Animate124Error):
    """Bad user input: unreadable image, empty prompt, missing file."""

    exit_code = EXIT_USAGE


class ProjectError(Animate124Error):
    """Project directory problems: missing earlier stage, corrupt manifest."""


class ProjectLockedError(ProjectError):
    """Another live process holds the project lock."""


class DamagedFileError(ProjectError):
    """A file the tool reads is missing, unreadable or damaged; ``path`` names it (see ``readers``)."""

    def __init__(self, message: str, hint: str | None = None, path: str | None = None) -> None:
        super().__init__(message, hint)
        self.path = path


class DiskFullError(ProjectError):
    """A write failed because the file system (or the user's quota) is full."""


class ModelNotFoundError(Animate124Error):
    """A pretrained model is not in the cache and cannot be downloaded (offline or no network)."""


class DownloadError(Animate124Error):
    """A model download failed or the downloaded files did not verify."""


class NotImplementedStageError(Animate124Error):
    """A capability that is not built yet (a later issue builds it)."""


class OutOfMemoryError(Animate124Error):
    """CUDA ran out of memory; the hint names the settings that reduce memory."""

    def __init__(self, message: str, hint: str | None = MEMORY_HINT) -> None:
        super().__init__(message, hint)


def is_cuda_oom(exc: BaseException) -> bool:
    """True for torch's out-of-memory exception (looked up only if torch is already imported)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    types = tuple(
        t
        for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if isinstance(t, type)
    )
    return bool(types) and isinstance(exc, types)


@contextlib.contextmanager
def oom_guard(what: str = "the run", hint: str | None = None) -> Iterator[None]:
    """Turn ``torch.OutOfMemoryError`` raised in the block into :class:`OutOfMemoryError`.

    ``what`` names the work for the message ("static stage, step 1200"); ``hint`` replaces the default
    list of memory settings (:data:`MEMORY_HINT`) when the caller knows the knob that helps most.
    Importing this module does not import torch::

        with oom_guard("static stage, step %d" % step):
            losses = step_fn()
    """
    try:
        yield
    except Exception as exc:
        if not is_cuda_oom(exc):
            raise
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise OutOfMemoryError(
            f"out of GPU memory during {what}" + (f" ({detail})" if detail else ""),
            hint=hint if hint is not None else MEMORY_HINT,
        ) from exc
