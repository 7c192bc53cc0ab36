"""Graceful Ctrl-C: the first SIGINT asks the loop to checkpoint and stop; a second one aborts."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class StopFlag:
    """Callable flag handed to training loops as ``should_stop``."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested


@contextlib.contextmanager
def graceful_interrupt() -> Iterator[StopFlag]:
    """Within the block, SIGINT sets the flag (loops checkpoint and return); a second SIGINT raises at once."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):  # noqa: ARG001
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
    if flag.requested:
        raise KeyboardInterrupt
