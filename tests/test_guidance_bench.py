"""``benchmarks/bench_guidance.py`` (issue 27 columns: exact TFLOP, achieved rate, gradient agreement, the record)
on the tiny priors, and ``benchmarks/guidance_calls.py``, which merges the per-variant records."""

from __future__ import annotations

import json

import pytest
from helpers_bench import load_benchmark


def _load(name: str):
    return load_benchmark(name, siblings=True)


def test_bench_guidance_tiny_reports_flops_and_agreement(tmp_path) -> None:
    from animate124.config.schema import StaticConfig
    from animate124.guidance.flops import call_flops

    bench = _load("bench_guidance")
    out, rec = tmp_path / "g.json", tmp_path / "calls.json"
    assert bench.main([
        "--tiny", "--tiny-cache", str(tmp_path / "tiny"), "--priors", "zero123", "--stages", "--agreement",
        "--variant", "channels_last", "--iters", "1", "--warmup", "0", "--out", str(out), "--calls-json", str(rec),
    ]) == 0  # fmt: skip
    (r,) = json.loads(out.read_text())["results"]
    comp, _ = bench.build_tiny("zero123", tmp_path / "tiny")
    keep = StaticConfig().vae_keep_pixels  # --stages: Zero123 as the static stage calls it, its encoder kept
    guid, call = bench.make_call("zero123", comp, None, True, bench.torch.device("cpu"), True, True, keep)
    assert r["flops"] == call_flops(guid, call.shape).as_dict() and r["tflop"] == r["flops"]["total"] / 1e12
    assert r["flops"]["recompute"] == 0 < r["flops"]["encode"]
    assert r["achieved_tflop_s"] == pytest.approx(r["tflop"] / (r["median_ms"] / 1e3))
    assert r["grad_cosine"] > 0.999 and r["grad_norm_error"] < 0.01
    calls = json.loads(rec.read_text())
    assert calls["card"] == "cpu" and calls["variant"] == "channels_last" and calls["dense_tflops"] is None
    assert set(calls["zero123"]) >= {"ms", "tflop", "share_of_peak", "grad_cosine"}


def _rec(variant: str, dense: float, **priors) -> dict:
    return {"card": "H100", "dense_tflops": dense, "variant": variant, **priors}


def _entry(ms: float, cos: float, err: float = 0.001, tflop: float = 10.0) -> dict:
    return {
        "ms": ms,
        "tflop": tflop,
        "achieved_tflop_s": tflop / ms * 1e3,
        "grad_cosine": cos,
        "grad_norm_error": err,
    }


def test_guidance_calls_keeps_the_fastest_variant_that_passes_the_rule(tmp_path) -> None:
    merge = _load("guidance_calls").merge
    records = [
        _rec("graphs", 700.0, sd=_entry(50, 1.0), video=_entry(170, 1.0)),
        _rec("compile", 710.0, sd=_entry(30, 0.9995), video=_entry(120, 0.998)),  # video fails the cosine
        _rec("compile_ma_cl", 705.0, sd=_entry(25, 0.9999, err=0.02)),  # fails the norm
        _rec("fp8", 700.0, sd=_entry(20, 0.985), video=_entry(90, 0.97)),
    ]
    inverts = [
        {"device": "H100", "paper_3000_steps_min": 12.5, "s_per_step": 0.25, "options": {"compile": False}},
        {"device": "H100", "paper_3000_steps_min": 6.0, "s_per_step": 0.12, "options": {"compile": True},
         "grad_cosine": 0.9999, "grad_norm_error": 0.001},
        {"device": "H100", "paper_3000_steps_min": 4.0, "s_per_step": 0.08, "options": {"fp8": True},
         "grad_cosine": 0.95, "grad_norm_error": 0.001},  # faster, but not the same maths
    ]  # fmt: skip
    out = merge(records, inverts)
    assert out["card"] == "H100" and out["dense_tflops"] == 710.0
    assert out["sd"]["variant"] == "compile" and out["sd"]["ms"] == 30
    assert out["sd"]["share_of_peak"] == pytest.approx(10.0 / 0.030 / 710.0, abs=1e-4)
    assert out["video"]["variant"] == "graphs"
    assert out["fp8"]["sd"]["variant"] == "fp8" and "video" not in out["fp8"]
    assert "zero123" not in out and out["baseline"]["sd"]["ms"] == 50
    assert out["invert_minutes"] == 6.0 and out["invert"]["options"] == {"compile": True}
    assert len(out["invert_runs"]) == 3
    with pytest.raises(SystemExit):
        merge([*records, {**records[0], "card": "H200"}], [])
