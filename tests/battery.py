"""The bad-input battery: the ways a careful user can give animate124 something wrong, damage its project
or its model cache, and what each one must get back.

Every case runs one command in-process (Typer's CliRunner) on its own copy of one finished tiny project
(``run-all examples/toy.png "a toy is spinning" --preset tiny``, made once), after the case's ``setup``
changed something (a bad option, a truncated model, random bytes in a checkpoint, a deleted image...),
under the case's ``patch`` where it has one (a full disk, Ctrl-C). The cases are in ``battery_cases.py``,
what they are made of in ``battery_kit.py``.
Each case must give:

* no traceback and no "internal error" (the command raised nothing but its own errors);
* an exit code from the case's list (2: usage or config, nothing changed; 1: runtime; 0: it worked);
* the case's expected words in the output (the one-line message that names the field or the file);
* never "up to date" over a damaged project: a case that damages a stage's file must not see that stage
  reported up to date, and when ``run-all`` (or the stage's own command) succeeds afterwards, every
  finished stage of the project must verify (files present with their recorded size and sha256).

Run it alone (``python tests/battery.py``; ``-k WORD`` runs the cases whose name contains WORD, ``-v``
prints every output) or through ``tests/test_battery.py`` (CI).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from battery_cases import cases  # noqa: E402
from battery_kit import PROMPT, REPO, TINY, Case, Ctx, verifies  # noqa: E402

__all__ = ["Outcome", "cases", "run", "run_case", "summary"]


@dataclass
class Outcome:
    case: Case
    code: int
    output: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


# --- running --------------------------------------------------------------------------------------------
#: A case that runs longer than this is stopped and fails (a stage that should have been refused ran).
CASE_LIMIT_S = float(os.environ.get("ANIMATE124_BATTERY_CASE_LIMIT_S", "180"))


class CaseTimeout(Exception):
    """Raised in a case that ran past :data:`CASE_LIMIT_S`."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    import signal

    def alarm(signum, frame):  # noqa: ARG001
        raise CaseTimeout(f"ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def make_base(root: Path) -> Ctx:
    """One finished tiny project in ``root/work`` (run-all through the CLI) and its model cache."""
    from typer.testing import CliRunner

    from animate124.cli.app import app

    work = root / "work"
    work.mkdir(parents=True)
    shutil.copy(REPO / "examples" / "toy.png", work / "toy.png")
    cache = Path(os.environ.get("ANIMATE124_CACHE", root / "cache"))
    env = {"COLUMNS": "200", "ANIMATE124_STATE_DIR": str(root / "state"), "ANIMATE124_CACHE": str(cache)}
    with _cwd(work):
        r = CliRunner().invoke(app, ["run-all", "toy.png", PROMPT, *TINY, "-q"], env=env)
    if r.exit_code != 0:
        raise RuntimeError(f"the base run-all failed ({r.exit_code}):\n{r.output}")
    shutil.copytree(work, work.with_name("pristine"), symlinks=True)
    return Ctx(work=work, cache=cache / "tiny-models")


def run_case(case: Case, base: Ctx, scratch: Path) -> Outcome:
    """Run ``case`` in ``base.work`` restored from its pristine copy (the same path for every case: the
    report and the manifest name absolute paths)."""
    from typer.testing import CliRunner

    from animate124.cli.app import app

    work = base.work
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base.work.with_name("pristine"), work, symlinks=True)
    cache_root = base.cache.parent
    if case.own_cache:
        cache_root = scratch / "cache"
        shutil.copytree(base.cache, cache_root / "tiny-models", symlinks=True)
    ctx = Ctx(work=work, cache=cache_root / "tiny-models")
    if case.setup is not None:
        case.setup(ctx)
    args = case.args(ctx) if callable(case.args) else list(case.args)
    env = {
        "COLUMNS": "200",
        "ANIMATE124_STATE_DIR": str(scratch / "state"),
        "ANIMATE124_CACHE": str(cache_root),
    }
    t0 = time.perf_counter()
    patch = case.patch(ctx) if case.patch is not None else contextlib.nullcontext()
    with _cwd(work), _time_limit(CASE_LIMIT_S), patch:
        r = CliRunner().invoke(app, args, env=env)
    out = Outcome(case, r.exit_code, r.output, seconds=time.perf_counter() - t0)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        import traceback

        out.problems.append("raised " + "".join(traceback.format_exception(r.exception)).strip())
    text = r.output
    if "Traceback" in text:
        out.problems.append("a traceback in the output")
    if "internal error" in text:
        out.problems.append("an internal error")
    if r.exit_code not in case.codes:
        out.problems.append(f"exit code {r.exit_code}, expected {case.codes}")
    flat = " ".join(text.split())
    for word in case.expect:
        if word not in flat:
            out.problems.append(f"the output does not say {word!r}")
    if case.damaged and f"{case.damaged}: up to date" in flat:
        out.problems.append(f"'{case.damaged}: up to date' over a damaged project")
    if case.verify_after and r.exit_code == 0:
        out.problems += [f"after exit 0: {p}" for p in verifies(ctx)]
    if case.check is not None:
        problem = case.check(ctx, flat)
        if problem:
            out.problems.append(problem)
    return out


def run(selected: list[Case], verbose: bool = False) -> list[Outcome]:
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="animate124-battery-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        base = make_base(root / "base")
        print(f"base project in {time.perf_counter() - t0:.1f} s; {len(selected)} cases", flush=True)
        for i, case in enumerate(selected):
            scratch = root / f"case{i:03d}"
            scratch.mkdir()
            try:
                o = run_case(case, base, scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            outcomes.append(o)
            mark = "ok  " if not o.problems else "FAIL"
            print(f"{mark} {o.seconds:5.1f} s  exit {o.code}  {case.name}", flush=True)
            if o.problems or verbose:
                for p in o.problems:
                    print(f"       - {p}")
                print("       | " + "\n       | ".join(o.output.strip().splitlines()[-8:]))
    return outcomes


def summary(outcomes: list[Outcome]) -> dict[str, object]:
    def count(word: str) -> int:
        return sum(any(word in p for p in o.problems) for o in outcomes)

    return {
        "cases": len(outcomes),
        "commands": sorted(
            {
                (o.case.args(Ctx(Path("w"), Path("c"))) if callable(o.case.args) else o.case.args)[0]
                for o in outcomes
            }
        ),  # fmt: skip
        "failed": [o.case.name for o in outcomes if o.problems],
        "tracebacks": count("traceback") + count("raised"),
        "internal_errors": count("internal error"),
        "up_to_date_over_damage": count("up to date' over")
        + count("after exit 0")
        + count("up to date over"),
        "seconds": round(sum(o.seconds for o in outcomes), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="run only the cases whose name contains this")
    ap.add_argument("-v", action="store_true", help="print every output")
    ap.add_argument("--json", type=Path, help="write the summary here")
    a = ap.parse_args()
    selected = [c for c in cases() if a.k in c.name]
    outcomes = run(selected, verbose=a.v)
    s = summary(outcomes)
    print(json.dumps(s, indent=2))
    if a.json:
        a.json.write_text(json.dumps(s, indent=2) + "\n")
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
