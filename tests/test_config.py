"""Config validation, presets and override precedence."""

from __future__ import annotations

import pytest
import yaml

from animate124.config import Config, config_hash, dump_yaml, from_dict, resolve_config, to_dict
from animate124.config.loader import describe_fields, parse_set
from animate124.config.presets import PRESETS, preset_descriptions
from animate124.errors import ConfigError
from animate124.stages.spec import get_stage


def test_defaults_are_paper_settings():
    c = Config()
    assert c.static.iters == 5000 and c.dynamic.iters == 10000 and c.refine.iters == 5000
    assert c.static.sd_guidance_scale == 100 and c.static.cfg_mode == "upstream"
    assert c.static.zero123_weight == 40 and c.static.zero123_guidance_scale == 5
    assert c.dynamic.video_t_range == (0.02, 0.98) and c.refine.t_range == (0.2, 0.8)
    assert c.field.log2_table_size == 16 and c.field.desired_resolution == 2048
    assert c.raymarch.max_steps == 1024 and c.raymarch.time_slots == 16
    assert c.run.seed == 3407
    # upstream bugs fixed by default, switch available
    assert c.raymarch.upstream_times_bug is False
    assert c.static.sds_grad_scale == "upstream"  # kept: it shaped the published static results (SPEC 11.1)


def test_frozen():
    c = Config()
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        c.static.iters = 3  # type: ignore[misc]


def test_every_preset_validates_and_has_description():
    for name in PRESETS:
        cfg = resolve_config(name)
        assert isinstance(cfg, Config)
    desc = preset_descriptions()
    assert set(desc) == {"paper", "fast", "low-vram", "tiny"} and all(desc.values())
    assert resolve_config("tiny").models.tiny is True


def test_unknown_key_names_the_field():
    with pytest.raises(ConfigError, match=r"static\.itrs"):
        resolve_config("paper", sets=["static.itrs=3"])
    with pytest.raises(ConfigError, match=r"unknown config key nosuch"):
        from_dict({"nosuch": {}})


@pytest.mark.parametrize(
    "item,pattern",
    [
        ("static.iters=abc", r"static\.iters: expected an integer"),
        ("static.iters=0", r"static\.iters: 0 is below the minimum 1"),
        ("static.cfg_mode=weird", r"static\.cfg_mode: 'weird' is not one of"),
        ("static.sd_t_range=[0.6,0.2]", r"low > high"),
        ("static.sd_t_range=0.5", r"expected a list of 2"),
        ("models.tiny=yes please", r"models\.tiny: expected true or false"),
        ("preprocess.border_ratio=2", r"above the maximum"),
        ("noequals", r"expected section\.key=value"),
    ],
)
def test_bad_values(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        resolve_config("paper", sets=[item])


def test_precedence_defaults_preset_file_options_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"static": {"iters": 111, "lr": 0.5}, "dynamic": {"iters": 222}}))
    # preset only
    assert resolve_config("fast").static.iters == 2000
    # file beats preset
    c = resolve_config("fast", f)
    assert c.static.iters == 111 and c.dynamic.iters == 222 and c.static.lr == 0.5
    # options beat file
    c = resolve_config("fast", f, {"static": {"iters": 333}})
    assert c.static.iters == 333 and c.static.lr == 0.5
    # --set beats everything
    c = resolve_config("fast", f, {"static": {"iters": 333}}, ["static.iters=444"])
    assert c.static.iters == 444
    # untouched fields keep the schema default
    assert c.static.sd_guidance_scale == 100


def test_set_parses_yaml_scalars():
    d = parse_set(["a.b=1e-3", "a.c=true", "a.d=[1, 2]", "x.y=hello world", "x.z="])
    assert d == {"a": {"b": 1e-3, "c": True, "d": [1, 2]}, "x": {"y": "hello world", "z": ""}}


def test_int_to_float_and_roundtrip():
    c = resolve_config("paper", sets=["static.lr=1", "static.sd_t_range=[0, 1]"])
    assert isinstance(c.static.lr, float) and c.static.sd_t_range == (0.0, 1.0)
    assert from_dict(yaml.safe_load(dump_yaml(c))) == c
    assert from_dict(to_dict(c)) == c


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config("paper", tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve_config("paper", bad)
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("nope")


def test_hash_tracks_relevant_sections_only():
    a = resolve_config("paper")
    b = resolve_config("paper", sets=["static.iters=10"])
    c = resolve_config("paper", sets=["run.device=cpu", "models.cache_dir=/x", "dynamic.iters=3"])
    assert config_hash(a, get_stage("static").sections) != config_hash(b, get_stage("static").sections)
    assert config_hash(a, get_stage("static").sections) == config_hash(
        c, get_stage("static").sections
    )  # device/cache/other stage do not matter
    assert config_hash(a, get_stage("dynamic").sections) != config_hash(c, get_stage("dynamic").sections)


def test_every_field_has_help():
    rows = describe_fields()
    assert len(rows) > 80
    assert all(h for *_, h in rows)


def test_yaml_file_exponent_floats(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("static:\n  lr: 1e-3\n")
    assert resolve_config("paper", f).static.lr == 1e-3
