"""Error types of the library.

The library raises :class:`Animate124Error` subclasses carrying a message and a hint. Only the CLI
turns them into a red line plus hint and an exit code (2 for usage/config errors, 1 for runtime
errors). See DESIGN.md, "Errors and output".
"""

from __future__ import annotations


class Animate124Error(Exception):
    """Base error: ``message`` says what went wrong, ``hint`` what the user can do about it."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(Animate124Error):
    """Invalid configuration, override, preset or command-line value."""

    exit_code = 2


class InputError(Animate124Error):
    """Bad user input: unreadable image, empty prompt, missing file."""

    exit_code = 2


class ProjectError(Animate124Error):
    """Project directory problems: missing earlier stage, corrupt manifest."""


class ProjectLockedError(ProjectError):
    """Another live process holds the project lock."""


class ModelNotFoundError(Animate124Error):
    """A pretrained model is not in the cache and cannot be downloaded (offline or no network)."""


class DownloadError(Animate124Error):
    """A model download failed or the downloaded files did not verify."""


class NotImplementedStageError(Animate124Error):
    """A capability that is not built yet (a later issue builds it)."""


class OutOfMemoryError(Animate124Error):
    """CUDA ran out of memory; the hint names the settings that reduce memory."""
