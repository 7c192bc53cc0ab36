"""benchmarks/backward_memory.py at tiny sizes (CPU): both checkpointing options keep fewer bytes for backward.

The VAE case needs ``../shared/data/hf-configs`` (skipped without it); the render case builds the paper field.
"""

from __future__ import annotations

import pytest
from helpers_bench import load_benchmark


def _bench():
    return load_benchmark("backward_memory")


@pytest.mark.slow
def test_backward_memory_smoke(shared_data, tmp_path):
    configs = shared_data / "hf-configs"
    cases = "render:1:12" + (
        ",sd:1:32" if (configs / "stable-diffusion-v1-5--stable-diffusion-v1-5").is_dir() else ""
    )
    res = _bench().main(["--configs", str(configs), "--cases", cases, "--out", str(tmp_path / "m.json")])
    by = {}
    for r in res["results"]:
        by.setdefault(r["case"], {})[r["checkpoint"]] = r
    assert "render" in by
    for case, pair in by.items():
        assert pair[True]["saved_mib"] * 3 < pair[False]["saved_mib"], case
    r = by["render"]
    assert r[True]["samples"] == r[False]["samples"] > 0
    assert (tmp_path / "m.json").exists()
