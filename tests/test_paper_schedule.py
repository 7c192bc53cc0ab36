"""benchmarks/paper_schedule.py: issue 12's acceptance record from a project's manifest and logs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import paper_schedule as ps  # noqa: E402


def _project(tmp_path: Path, logs: dict[str, list[tuple[int, float]]], seconds: dict[str, float]) -> Path:
    (tmp_path / "logs").mkdir(parents=True)
    stages = {}
    for s, recs in logs.items():
        (tmp_path / "logs" / f"{s}.jsonl").write_text(
            "".join(json.dumps({"step": k, "time": t, "loss": 1.0}) + "\n" for k, t in recs)
        )
        stages[s] = {
            "status": "done",
            "seconds": seconds[s],
            "metrics": {"steps": recs[-1][0], "peak_allocated_gib": 10.0, "peak_reserved_gib": 12.0},
        }
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": stages}))
    return tmp_path


def test_steady_rate_uses_the_second_half_of_the_last_stretch() -> None:
    # 10 steps per record; 1 s apart, then a resume (a 100 s pause), then 2 s apart with a slow first record
    recs = [{"step": 10 * i, "time": float(i)} for i in range(1, 6)]
    recs += [{"step": 60, "time": 200.0}, {"step": 70, "time": 205.0}]
    recs += [{"step": 70 + 10 * i, "time": 205.0 + 2 * i} for i in range(1, 6)]
    assert [r["step"] for r in ps.stretches(recs)[-1]][0] == 60
    rate, first, last = ps.steady_rate(recs)
    assert (first, last) == (90, 120) and rate == pytest.approx(5.0)
    # the average over both stretches: (50 - 10) steps in 4 s and (120 - 60) steps in 15 s
    assert ps.whole_run_rate(recs) == pytest.approx(100 / 19)
    windows = ps.rate_windows(recs, n=4)
    assert windows[0][:2] == [10, 30] and windows[0][2] == pytest.approx(10.0)
    assert windows[-1][1] == 120 and windows[-1][2] == pytest.approx(5.0)
    assert all(w[0] >= 60 or w[1] <= 50 for w in windows)  # no window spans the pause
    # a step that goes back (a restart from an older checkpoint) also starts a stretch
    back = [
        {"step": 10, "time": 0.0},
        {"step": 20, "time": 1.0},
        {"step": 10, "time": 2.0},
        {"step": 20, "time": 3.0},
    ]
    assert ps.stretches(back)[-1] == back[2:]
    with pytest.raises(ValueError):
        ps.steady_rate(back[:1])


def test_a_resume_just_before_the_end_widens_the_rate_back_across_the_pause() -> None:
    """Stopped at step 980 and resumed for the last 20 steps (the 2026-11-30 capped run): the rate covers the
    last quarter of the steps over both stretches, without the pause, instead of one 10-step interval."""
    recs = [{"step": 10 * i, "time": 0.5 * i} for i in range(1, 99)]  # 20 it/s up to step 980
    recs += [{"step": 990, "time": 600.0}, {"step": 1000, "time": 601.0}]  # after the resume: 10 it/s
    rate, first, last = ps.steady_rate(recs)
    assert (first, last) == (760, 1000)  # the intervals that start in the last 990 / 4 steps
    # steps 760..980 in 11 s, then 990..1000 in 1 s; the pause 980 -> 990 is left out
    assert rate == pytest.approx(230 / 12)


def test_schedule_projects_the_paper_steps_with_each_stages_overhead(tmp_path) -> None:
    paper = ps.paper_steps()
    assert paper == {"invert": 3000, "static": 5000, "dynamic": 10000, "refine": 5000}
    rates = {"invert": 4.0, "static": 10.0, "dynamic": 2.0, "refine": 1.0}
    logs, seconds = {}, {}
    for s, r in rates.items():
        n = paper[s] // 10
        logs[s] = [(k, 100.0 + k / r) for k in range(10, n + 1, 10)]
        seconds[s] = n / r + 30.0  # 30 s of loading and warm-up
    lv = _project(tmp_path / "lv", {s: v[:3] for s, v in logs.items()}, seconds)
    lv_manifest = json.loads((lv / "manifest.json").read_text())
    lv_manifest["stages"]["refine"]["metrics"]["peak_allocated_gib"] = 11.4
    (lv / "manifest.json").write_text(json.dumps(lv_manifest))
    rec = ps.schedule(_project(tmp_path / "p", logs, seconds), "test card", low_vram=lv)
    assert rec["card"] == "test card" and rec["min_fraction_of_paper"] == pytest.approx(0.1)
    for s, r in rates.items():
        v = rec["stages"][s]
        assert {"steps_run", "paper_steps", "it_s", "peak_allocated_gib", "peak_reserved_gib"} <= v.keys()
        assert v["it_s"] == pytest.approx(r) and v["overhead_s"] == pytest.approx(30.0, abs=0.01)
        assert v["projected_min"] == pytest.approx((paper[s] / r + 30.0) / 60.0, abs=0.01)
    want = sum((paper[s] / r + 30.0) / 60.0 for s, r in rates.items())
    assert rec["projected_total_min"] == pytest.approx(want, abs=0.1)
    assert rec["low_vram_peak_gib"] == 11.4


def test_a_resumed_stage_is_timed_after_its_checkpoint(tmp_path) -> None:
    """A quick resume (no long pause) is found from the manifest's resumed_from_step."""
    recs = [(k, float(k)) for k in range(10, 50, 10)] + [(k, 45.0 + 2 * k) for k in range(50, 110, 10)]
    p = _project(tmp_path, {"invert": recs}, {"invert": 200.0})
    m = json.loads((p / "manifest.json").read_text())
    m["stages"]["invert"]["metrics"]["resumed_from_step"] = 40
    entry = ps.stage_entry(p, "invert", m["stages"]["invert"], 3000)
    assert entry["it_s"] == pytest.approx(0.5) and entry["rate_steps"][0] >= 50
    assert entry["invocations"] == "resumed from step 40"
    assert entry["overhead_s"] == pytest.approx(200.0 - 60 / 0.5)


def test_schedule_refuses_a_project_with_a_stage_not_done(tmp_path) -> None:
    p = _project(tmp_path, {"invert": [(10, 1.0), (20, 2.0)]}, {"invert": 5.0})
    with pytest.raises(ValueError, match="static"):
        ps.schedule(p, "card")


def test_capped_cli_runs_the_cli_and_rejects_a_missing_cap(capsys) -> None:
    import capped_cli

    with pytest.raises(SystemExit) as ei:
        capped_cli.main(["config", "presets"])
    assert "usage" in str(ei.value)
    with pytest.raises(SystemExit) as ok:  # typer exits 0 after the command
        capped_cli.main(["--gib", "24", "config", "presets"])
    assert ok.value.code in (0, None)
    out = capsys.readouterr()
    assert "low-vram" in out.out
    assert ("capped at 24 GiB" in out.err) or ("no CUDA" in out.err)


def test_capped_cli_records_seconds_exit_code_and_peaks(tmp_path, capsys) -> None:
    import json

    import capped_cli

    out = tmp_path / "rec.json"
    with pytest.raises(SystemExit) as ok:
        capped_cli.main(["--gib", "24", "--record", str(out), "config", "presets"])
    assert ok.value.code in (0, None)
    rec = json.loads(out.read_text())
    assert rec["argv"] == ["config", "presets"] and rec["exit_code"] in (0, None)
    assert 0 < rec["seconds"] < 60 and rec["peak_host_gib"] > 0.01  # a Python process with torch is > 10 MiB
    with pytest.raises(SystemExit) as bad:  # an unknown command: typer's usage error, still recorded
        capped_cli.main(["--gib", "24", "--record", str(out), "no-such-command"])
    assert json.loads(out.read_text())["exit_code"] == bad.value.code == 2
    with pytest.raises(SystemExit, match="usage"):
        capped_cli.main(["--gib", "24", "--record"])


def test_a_profiled_run_carries_its_per_part_times(tmp_path) -> None:
    """``run.profile``'s ``ms_per_step`` (``nerf_side`` among them, issue 26) goes into the stage's entry; a run
    without it has no such key."""
    logs = {s: [(k, 100.0 + k) for k in range(10, 101, 10)] for s in ps.STAGES}
    p = _project(tmp_path / "p", logs, dict.fromkeys(ps.STAGES, 100.0))
    m = json.loads((p / "manifest.json").read_text())
    parts = {"render": 30.0, "video": 140.0, "backward_nerf": 60.0, "nerf_side": 95.0}
    m["stages"]["dynamic"]["metrics"]["ms_per_step"] = parts
    (p / "manifest.json").write_text(json.dumps(m))
    rec = ps.schedule(p, "test card")
    assert rec["stages"]["dynamic"]["ms_per_step"] == parts
    assert "ms_per_step" not in rec["stages"]["static"]
