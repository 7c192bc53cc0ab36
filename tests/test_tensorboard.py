"""``--set run.tensorboard=true``: the JSONL scalars also as TensorBoard events under logs/tb/<stage>."""

from __future__ import annotations

import builtins
import json
import math

import pytest

from animate124.engine.scalars import ScalarLog, check_tensorboard
from animate124.errors import ConfigError


def test_the_same_scalars_as_the_jsonl_reach_tensorboard(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = tmp_path / "logs" / "static.jsonl"
    with ScalarLog(path, tensorboard=True) as log:
        for step in (10, 20, 30):
            log.write(step, {"loss/rgb": 1.0 / step, "grad/sd": 2.0 * step, "lr": 1e-3, "note": "text"})
        log.write(40, {"loss/rgb": math.nan})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    acc = EventAccumulator(str(tmp_path / "logs" / "tb" / "static"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss/rgb", "grad/sd", "lr"}
    for tag in ("loss/rgb", "grad/sd", "lr"):
        events = acc.Scalars(tag)
        expected = [(r["step"], r[tag]) for r in lines if tag in r and math.isfinite(r[tag])]
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events] == expected


def test_missing_tensorboard_is_a_clear_error_naming_the_extra(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("tensorboard") or name == "torch.utils.tensorboard":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError) as err:
        ScalarLog(tmp_path / "s.jsonl", tensorboard=True)
    assert "tensorboard package is not installed" in err.value.message
    assert "animate124[tensorboard]" in err.value.hint
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match="tensorboard package is not installed"):
        check_tensorboard()
