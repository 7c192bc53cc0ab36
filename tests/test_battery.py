"""The bad-input battery in CI (tests/battery.py): every case, then one test per case the issue that made it
named (issue 23), each showing the message, the exit code and the project afterwards through its case.

The battery runs once per session on one finished tiny project (each case on its own copy).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import battery  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outcomes() -> dict[str, battery.Outcome]:
    return {o.case.name: o for o in battery.run(battery.cases())}


def test_the_battery_has_no_traceback_internal_error_or_up_to_date_over_damage(outcomes):
    s = battery.summary(list(outcomes.values()))
    assert s["cases"] >= 150 and len(s["commands"]) >= 12, s
    assert s["tracebacks"] == 0 and s["internal_errors"] == 0 and s["up_to_date_over_damage"] == 0, s
    failed = {name: outcomes[name].problems for name in s["failed"]}
    assert not failed, failed


#: The cases of issue 23's list, by battery case name; each shows the message (the case's words), the exit
#: code and the project afterwards (verified, unchanged, or the stage's status, by the case's checks). The
#: issue's other cases are in test_trust.py (reader, signals, logs, pins) and test_reproducible.py.
ISSUE_CASES = [
    # "up to date" over a broken project: the damaged stage is redone and the project verifies afterwards
    "run-all after dynamic/model.safetensors truncated",
    "run-all after preprocess/rgba.png deleted",
    # internal errors
    "set run.checkpoint_every=0 on run-all",
    "-c not UTF-8 on run-all",
    "run-all prompt with invalid UTF-8",
    "render --stage dynamic after its model truncated",
    "export --stage dynamic after its model truncated",
    "evaluate --stage dynamic after its model truncated",
    "static with the tiny zero123 model truncated",
    "static resumed from a truncated safetensors checkpoint",
    "static resumed from a random safetensors checkpoint",
    "static resumed from a random json checkpoint",
    "static checkpoint on a full disk",
    # stated wrong or accepted wrong
    "set static.iters=99999999999999999999 on static",
    "-p empty on run-all",
    "-c a directory on run-all",
    "run-all --from static without invert",
    "evaluate --clip-model missing",
    "evaluate --preset keeps the prompts",
    "static --force after preprocess/rgba.png deleted",
    "preprocess on a full disk",
    # minor
    "static --force interrupted by Ctrl-C",
    "run-all on a finished project writes nothing",
]


@pytest.mark.parametrize("name", ISSUE_CASES)
def test_issue_case(outcomes, name):
    o = outcomes[name]
    assert not o.problems, (o.problems, o.output[-3000:])
