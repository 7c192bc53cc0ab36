"""Graceful stops: Ctrl-C (SIGINT) and SIGTERM (what cluster schedulers, Ray and ``kill`` send on preemption).

Inside :func:`graceful_interrupt` (a training loop) the first signal asks the loop to checkpoint at the
current step and return; a second one raises :class:`Interrupted` at once. Outside such a block,
:func:`terminate_like_interrupt` makes SIGTERM raise :class:`Interrupted` the way Python's own SIGINT
handler raises ``KeyboardInterrupt``, so the stage runner marks the stage "interrupted" instead of the
process dying with the stage left "running". :class:`Interrupted` is a ``KeyboardInterrupt``: everything
that cleans up after Ctrl-C cleans up after SIGTERM too; the CLI exits with 128 + the signal number
(130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Interrupted", "StopFlag", "graceful_interrupt", "terminate_like_interrupt", "STOP_SIGNALS"]

#: The signals that stop a run gracefully.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; ``signum`` says which (``signal.SIGINT`` or ``signal.SIGTERM``)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


class StopFlag:
    """Callable flag handed to training loops as ``should_stop``; ``signum`` is the signal that set it."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = int(signal.SIGINT)

    def __call__(self) -> bool:
        return self.requested


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def graceful_interrupt() -> Iterator[StopFlag]:
    """Within the block, SIGINT or SIGTERM sets the flag (loops checkpoint and return); a second signal
    raises :class:`Interrupted` at once. Leaving the block after a signal raises :class:`Interrupted`."""
    flag = StopFlag()
    if not _in_main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def handler(signum, frame):  # noqa: ARG001
        if flag.requested:
            raise Interrupted(signum)
        flag.requested, flag.signum = True, int(signum)

    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if flag.requested:
        raise Interrupted(flag.signum)


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Interrupted` (as SIGINT raises ``KeyboardInterrupt``)."""
    if not _in_main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
