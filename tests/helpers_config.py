"""Paper values for library calls in tests, read from the config schema (the only place defaults live)."""

from __future__ import annotations

from typing import Any

from animate124.config.schema import Config

_CFG = Config()


def camera_kwargs(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of ``sample_training_camera`` at paper settings (128² renders)."""
    c = _CFG.camera
    kw: dict[str, Any] = dict(
        n=1,
        radius=c.radius,
        fovy=c.fovy,
        height=_CFG.static.render_size,
        width=_CFG.static.render_size,
        uniform_sphere_rate=c.uniform_sphere_rate,
        theta_range=c.polar_range,
        phi_range=c.azimuth_range,
        fix_upstream=not c.upstream_sphere_sampling,
    )
    kw.update(overrides)
    return kw


def trajectory_kwargs(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of ``sample_trajectory`` at paper settings."""
    c, d = _CFG.camera, _CFG.dynamic
    kw = camera_kwargs()
    kw.pop("n")
    kw.update(
        frames=d.frames,
        dynamic_cam_rate=d.dynamic_cam_rate,
        max_dpolar=c.max_dpolar,
        max_dazimuth=c.max_dazimuth,
        clamp_polar=c.clamp_polar,
    )
    kw.update(overrides)
    return kw


def frame_time_kwargs(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of ``sample_frame_times`` at paper settings (SPEC 5.1)."""
    d = _CFG.dynamic
    kw: dict[str, Any] = dict(frames=d.frames, precision=d.time_precision, zero_rate=d.zero_rate)
    kw.update(overrides)
    return kw
