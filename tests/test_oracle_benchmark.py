"""benchmarks/oracle_stages.py on the real data at tiny sizes (``--smoke``): both stages, the JSON, and the
SIGKILL + resume mode. Skipped when ../shared/data is absent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers_bench import load_benchmark


def _bench():
    return load_benchmark("oracle_stages")


def _need(shared_data: Path) -> None:
    for sub in ("nerf-synthetic-400/lego", "dnerf-400/standup"):
        if not (shared_data / sub).is_dir():
            pytest.skip(f"{sub} not in {shared_data}")


@pytest.mark.slow
def test_smoke_runs_both_stages_and_writes_the_json(shared_data, tmp_path):
    _need(shared_data)
    b = _bench()
    out = tmp_path / "oracle.json"
    res = b.main(["--smoke", "--device", "cpu", "--data-root", str(shared_data), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["card"] == "cpu"
    for stage, scene in (("static", "lego"), ("dynamic", "dnerf:standup")):
        r = saved[stage]
        assert r["scene"] == scene and r["steps"] == 6
        assert math.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1 and r["minutes"] >= 0
        assert any("albedo" in d for d in r["deviations"])
        assert r["train_psnr_last"] is not None  # the oracle saw the stage's renders
    assert saved["static"]["priors"] == ["sd"]
    assert res["static"]["psnr"] == saved["static"]["psnr"]
    # the config the stages ran: what the oracle cannot know is off, the rest is the paper preset
    cfg = saved["config"]
    assert cfg["shading"]["ambient_range"] == [1.0, 1.0] and cfg["shading"]["random_background"] is False
    assert cfg["static"]["textureless_rate"] == 0.0 and cfg["static"]["normal_warmup_iters"] == 0
    # the oracle's gradients are not SD's: its SDS acts at the nominal weight, and the JSON says why
    assert cfg["static"]["sds_grad_scale"] == "nominal"
    assert any("sds_grad_scale=nominal" in d for d in saved["static"]["deviations"])
    assert cfg["loss"]["entropy"] == 1e-3 and cfg["static"]["lr"] == 1e-3


@pytest.mark.slow
def test_kill_resume_mode(shared_data, tmp_path):
    _need(shared_data)
    b = _bench()
    out = tmp_path / "oracle.json"
    res = b.main(
        ["--smoke", "--device", "cpu", "--scene", "lego", "--steps", "12", "--kill-resume"]
        + ["--data-root", str(shared_data), "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    )
    k = res["kill_resume"]
    assert 6 <= k["killed_after_step"] < 12
    assert 0 < k["resumed_from_step"] <= k["killed_after_step"]
    assert abs(k["psnr_diff"]) <= 0.2 and k["within_0.2dB"] is True
    assert json.loads(out.read_text())["kill_resume"]["psnr"] == k["psnr"]


@pytest.mark.slow
def test_checkpointed_normals_train_the_same_stages(shared_data, tmp_path):
    """``raymarch.checkpoint_normals`` computes the same function: both real stages, driven by the oracles
    on the real data, end with bit-identical losses and test PSNR (issue 12's equivalence through a stage)."""
    _need(shared_data)
    b = _bench()
    runs = {}
    for ck in ("false", "true"):
        out = tmp_path / f"oracle_{ck}.json"
        argv = ["--smoke", "--device", "cpu", "--data-root", str(shared_data), "--out", str(out),
                "--steps", "4", "--dynamic-steps", "4", "--set", f"raymarch.checkpoint_normals={ck}"]  # fmt: skip
        runs[ck] = b.main(argv)
    for stage in ("static", "dynamic"):
        a, c = runs["false"][stage], runs["true"][stage]
        assert a["psnr"] == c["psnr"], stage
        assert a["trainer"]["final_losses"] == c["trainer"]["final_losses"], stage


@pytest.mark.slow
def test_time_cap_and_psnr_curve(shared_data, tmp_path):
    """``--train-minutes`` stops a stage early (checkpointed, the steps run recorded) and ``--eval-every``
    records a test-PSNR curve."""
    _need(shared_data)
    b = _bench()
    base = ["--smoke", "--device", "cpu", "--data-root", str(shared_data), "--scene", "dnerf:standup"]
    full = b.main(base + ["--dynamic-steps", "6", "--eval-every", "2", "--out", str(tmp_path / "a.json")])
    d = full["dynamic"]
    assert d["steps"] == d["planned_steps"] == 6 and not d["stopped_by_time_cap"]
    assert [row[0] for row in d["psnr_curve"]] == [2, 4] and all(math.isfinite(r[1]) for r in d["psnr_curve"])
    capped = b.main(
        base + ["--dynamic-steps", "6", "--train-minutes", "1e-9", "--out", str(tmp_path / "b.json")]
    )
    c = capped["dynamic"]
    assert c["stopped_by_time_cap"] and c["steps"] < c["planned_steps"] == 6 and math.isfinite(c["psnr"])
