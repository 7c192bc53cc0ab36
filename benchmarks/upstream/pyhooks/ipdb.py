"""Stand-in for ``ipdb``, which upstream imports at module level in most files (SPEC 11.11).

The one live call, ``ipdb.set_trace()`` on a NaN loss in the 4D trainer, would wait for a debugger forever
in a batch job. Here it records the event (stderr and the step log) and returns, so the run goes on as it
would after ``continue`` in the debugger. The benchmark reports any such event with the stage.
"""

from __future__ import annotations

import sys


def set_trace(*args: object, **kwargs: object) -> None:
    frame = sys._getframe(1)
    where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
    print(f"[a124 benchmark] ipdb.set_trace() reached at {where} (NaN loss); continuing", file=sys.stderr)
    try:
        import a124_steps

        a124_steps.note("ipdb.set_trace", where=where)
    except ImportError:  # pragma: no cover - the hooks folder is always on the path with this stub
        pass
