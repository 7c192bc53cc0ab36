"""benchmarks/batch_gpu.py (issue 28's GPU measurement) on synthetic records: one round as before, several
rounds (each round's parts paired with each other, the median over rounds), and ``report``'s section."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from helpers_bench import load_benchmark

STAGES = ("preprocess", "invert", "static", "dynamic", "refine")


def _bench():
    return load_benchmark("batch_gpu")


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _manifest(project: Path, total: float) -> None:
    """A project whose five stages took ``total`` seconds together."""
    _write(project / "manifest.json", {"stages": {s: {"seconds": total / len(STAGES)} for s in STAGES}})


def _round(
    d: Path, names: tuple[str, str, str], plain: float, plain_in: float, batch: float, batch_in: float
):
    """One round's records: each run-all ``plain`` s wall, ``plain_in`` s in its stages; the batch ``batch`` s
    wall, each task ``batch_in`` s in its stages (the tasks one after the other, as on one GPU)."""
    p1, b, p2 = names
    for n in (p1, p2):
        _write(d / "rec" / f"{n}.json", {"part": n, "seconds": plain, "exit_code": 0})
        _manifest(d / n, plain_in)
    _write(d / "rec" / f"{b}.json", {"part": b, "seconds": batch, "exit_code": 0})
    _write(d / b / "batch.json", {"counts": {"done": 2, "failed": 0}})
    for i, asset in enumerate(("toy", "toy2")):
        start = 100.0 + i * (batch_in + 3)
        _write(d / b / ".batch" / f"{asset}.json", {
            "asset": asset, "status": "done", "seconds": batch_in + 2, "started": start,
            "finished": start + batch_in + 2, "host": "h", "pid": 10 + i, "cuda_visible_devices": "0", "threads": 8,
        })  # fmt: skip
        _manifest(d / b / asset, batch_in)


@pytest.fixture
def two_rounds(tmp_path):
    d = tmp_path / "batchbench"
    # round 1: plain 2 x 50 s (2 x 40 in the stages), batch 110 s (2 x 42): +10 %, outside 20 vs 26 s -> +6 s
    _round(d, ("plain_toy", "batch", "plain_toy2"), 50.0, 40.0, 110.0, 42.0)
    # round 2: plain 2 x 60 s (2 x 50), batch 124.8 s (2 x 50): +4 %, outside 20 vs 24.8 s -> +4.8 s
    _round(d, ("plain_toy.r2", "batch.r2", "plain_toy2.r2"), 60.0, 50.0, 124.8, 50.0)
    return d


def test_round_names():
    b = _bench()
    assert b.round_names(1) == ("plain_toy", "batch", "plain_toy2")
    assert b.round_names(3) == ("plain_toy.r3", "batch.r3", "plain_toy2.r3")


def test_two_rounds_pair_each_rounds_parts_and_take_the_median(two_rounds):
    b = _bench()
    r = b.summarize(two_rounds, "NVIDIA H100", "10 60 30 10", rounds=2)
    assert [x["round"] for x in r["rounds"]] == [1, 2]
    one, two = r["rounds"]
    # each round against its own run-alls (round 2's batch over round 1's run-alls would be +24.8 %)
    assert one["plain_run_all_seconds"] == 100.0 and one["batch_seconds"] == 110.0
    assert one["ray_overhead_pct"] == pytest.approx(10.0) and not one["within_target"]
    assert two["plain_run_all_seconds"] == 120.0 and two["batch_seconds"] == 124.8
    assert two["ray_overhead_pct"] == pytest.approx(4.0) and two["within_target"]
    assert one["outside_stages_seconds"] == {"plain": 20.0, "batch": 26.0}
    assert two["outside_stages_seconds"] == {"plain": 20.0, "batch": 24.8}
    assert one["fixed_cost_seconds"] == pytest.approx(6.0) and two["fixed_cost_seconds"] == pytest.approx(4.8)
    assert one["in_stages_difference_seconds"] == pytest.approx(4.0)
    assert two["in_stages_difference_seconds"] == pytest.approx(0.0)
    assert set(one["exit_codes"]) == {"plain_toy", "plain_toy2", "batch"}
    assert set(two["exit_codes"]) == {"plain_toy.r2", "plain_toy2.r2", "batch.r2"}
    # over the rounds
    assert r["overhead_median_pct"] == pytest.approx(7.0)
    assert (r["overhead_min_pct"], r["overhead_max_pct"]) == (pytest.approx(4.0), pytest.approx(10.0))
    assert r["within_target_median"] is False
    assert r["fixed_cost_median_seconds"] == pytest.approx(5.4)
    assert (r["fixed_cost_min_seconds"], r["fixed_cost_max_seconds"]) == (
        pytest.approx(4.8),
        pytest.approx(6.0),
    )
    assert r["in_stages_difference_median_seconds"] == pytest.approx(2.0)
    # round 1 stays at the top level, under the keys a one-round result has
    assert r["ray_overhead_pct"] == pytest.approx(10.0) and r["batch_seconds"] == 110.0
    assert r["plain_run_all_seconds"] == 100.0 and r["within_target"] is False
    assert r["exit_codes"] == {"plain_toy": 0, "plain_toy2": 0, "batch": 0}
    assert r["tasks_overlapped"] is False


def test_the_median_of_three_rounds_is_not_their_mean(two_rounds):
    b = _bench()
    # round 3: plain 2 x 50 s, batch 104.5 s: +4.5 %. Median of 10, 4, 4.5 is 4.5 (within); the mean 6.17 is not
    _round(two_rounds, ("plain_toy.r3", "batch.r3", "plain_toy2.r3"), 50.0, 40.0, 104.5, 40.0)
    r = b.summarize(two_rounds, "NVIDIA H100", "10 60 30 10", rounds=3)
    assert [x["ray_overhead_pct"] for x in r["rounds"]] == [pytest.approx(10.0), pytest.approx(4.0),
                                                             pytest.approx(4.5)]  # fmt: skip
    assert r["overhead_median_pct"] == pytest.approx(4.5) and r["within_target_median"] is True
    assert r["fixed_cost_median_seconds"] == pytest.approx(4.8)  # of 6.0, 4.8, 4.5


def test_one_round_reads_only_round_one(two_rounds):
    b = _bench()
    r = b.summarize(two_rounds, "NVIDIA H100", "10 60 30 10")
    assert len(r["rounds"]) == 1 and r["overhead_median_pct"] == r["ray_overhead_pct"] == pytest.approx(10.0)
    text = b.markdown(r, "raw")
    assert (
        text.startswith("**Card: NVIDIA H100**")
        and "rounds" not in text
        and "Ray's overhead: **+10.0 %**" in text
    )


def test_a_missing_part_of_a_later_round_is_named(two_rounds):
    b = _bench()
    (two_rounds / "rec" / "batch.r2.json").unlink()
    with pytest.raises(SystemExit, match=r"batch\.r2 .*run the same call 2 command again"):
        b.summarize(two_rounds, "NVIDIA H100", "10 60 30 10", rounds=2)


def test_report_writes_the_rounds_table_and_the_median_verdict(two_rounds, tmp_path):
    b = _bench()
    r_dir = tmp_path / "final" / "r"
    r_dir.mkdir(parents=True)
    (r_dir / "batch_gpu.json").write_text(
        json.dumps(b.summarize(two_rounds, "NVIDIA H100", "10 60 30 10", 2))
    )
    (r_dir / "batch.r2.log").write_text("Ray: started in 6.0 s\n")
    tgz = tmp_path / "results.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(r_dir, arcname="r")
    bench_md = tmp_path / "BENCHMARKS.md"
    bench_md.write_text(f"# x\n\nbefore\n{b.BEGIN}\nold numbers\n{b.END}\nafter\n")
    results = tmp_path / "results"
    results.mkdir()
    b.report(tgz, bench_md, results)
    doc = bench_md.read_text()
    assert (
        doc.startswith("# x\n\nbefore\n") and doc.endswith(f"{b.END}\nafter\n") and "old numbers" not in doc
    )
    section = doc.split(b.BEGIN, 1)[1].split(b.END, 1)[0]
    assert "**2 rounds**" in section
    assert (
        "| 1 (plain_toy, batch, plain_toy2) | 100.0 | 110.0 | +10.0 % | 80.0 / 84.0 | 20.0 / 26.0 | +6.0 |"
        in section
    )
    assert (
        "| 2 (plain_toy.r2, batch.r2, plain_toy2.r2) | 120.0 | 124.8 | +4.0 % | 100.0 / 100.0 | 20.0 / 24.8 | +4.8 |"
        in section
    )
    assert "median **+7.0 %** (**over** the 5 % target), from +4.0 to +10.0 %" in section
    assert "median 5.4 s, from 4.8 to 6.0 s" in section
    assert "Round 1's overhead: **+10.0 %**" in section and section.count("**Card:") == 1
    saved = json.loads((results / "batch_gpu.json").read_text())
    assert saved["overhead_median_pct"] == pytest.approx(7.0) and len(saved["rounds"]) == 2
    raw = (
        results / f"{saved['date']}-h100-issue28-steps10-60-30-10-rounds2"
    )  # the steps: one day, several measurements
    assert (raw / "batch.r2.log").is_file() and (raw / "batch_gpu.json").is_file()


def test_driver_timeline_from_the_commands_start_and_end(tmp_path):
    """With the batch command's start and end in its part record (gpu_batch.sh writes them), the driver's time
    outside the tasks splits into before the first task, between tasks and after the last; they add up to
    ``driver_seconds_outside_tasks``. Records without them (older measurements) give no timeline."""
    b = _bench()
    d = tmp_path / "batchbench"
    _round(d, ("plain_toy", "batch", "plain_toy2"), 50.0, 40.0, 110.0, 42.0)
    assert "driver_timeline_seconds" not in b.summarize(d, "H100", "10 60 30 10")
    # tasks: toy 100 -> 144, toy2 145 -> 189 (_round); the command 93.5 -> 203.5 s (110 s)
    _write(
        d / "rec" / "batch.json",
        {"part": "batch", "seconds": 110.0, "exit_code": 0, "start": 93.5, "end": 203.5},
    )
    r = b.summarize(d, "H100", "10 60 30 10")
    t = r["driver_timeline_seconds"]
    assert t == {"before_first_task": 6.5, "between_tasks": [1.0], "after_last_task": 14.5}
    assert t["before_first_task"] + sum(t["between_tasks"]) + t["after_last_task"] == pytest.approx(
        r["driver_seconds_outside_tasks"]
    )
    assert "(6.5 s before the first task, 1.0 s between tasks, 14.5 s after the last)" in b.markdown(r, "raw")
