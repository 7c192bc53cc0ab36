"""``benchmarks/weights.py``: the resident bytes per stage, counted from the real configs on the meta device.

The parameter counts are checked against the published sizes of the models (SD 1.5 UNet 859.52 M, its VAE
83.65 M, the CLIP ViT-L/14 text encoder 123.06 M), so a wrong config or dtype shows up here.
"""

from __future__ import annotations

import pytest
from helpers_bench import load_benchmark


def _load():
    return load_benchmark("weights", "weights_bench")


def test_resident_bytes_per_stage(shared_data, tmp_path) -> None:
    configs = shared_data / "hf-configs"
    if not (configs / "stable-diffusion-v1-5--stable-diffusion-v1-5").is_dir():
        pytest.skip("hf-configs not present")
    res = _load().main(["--configs", str(configs), "--out", str(tmp_path / "w.json")])
    items, stages = res["items"], res["stages"]
    assert items["sd.unet"]["params"] == 859_520_964
    assert items["sd.vae"]["params"] == 83_653_863
    assert items["sd.text_encoder"]["params"] // 10_000 == 12_306  # 123.06 M (+ the position-id buffer)
    assert items["sd.unet"]["bytes"] == 2 * items["sd.unet"]["params"]  # fp16 UNet, fp32 VAE
    assert items["sd.vae"]["bytes"] == 4 * items["sd.vae"]["params"]
    # each stage sums its parts; refine holds the dynamic stage's set plus SD, ControlNet and a frozen field
    gib = 2.0**30
    for s in stages.values():
        assert s["gib"] == pytest.approx(sum(items[k]["bytes"] for k in s["parts"]) / gib, abs=1e-3)
    assert set(stages["dynamic"]["parts"]) < set(stages["refine"]["parts"])
    assert 7.0 < stages["dynamic"]["gib"] < 8.0 and 10.0 < stages["refine"]["gib"] < 12.0
