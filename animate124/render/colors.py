"""Colours of the output renders: depth colour maps and background colours (``animate124 render``)."""

from __future__ import annotations

import re

import torch
from torch import Tensor

from animate124.errors import Animate124Error

__all__ = ["OutputError", "COLORMAPS", "apply_colormap", "parse_background"]


class OutputError(Animate124Error):
    """A bad output request (channel, background, time, colour map)."""

    exit_code = 2


# ------------------------------------------------------------------------------------------ colours
# Key colours sampled evenly from the published maps (turbo: Google AI, 2019, Apache-2.0; viridis:
# matplotlib, CC0), linearly interpolated in between. 17 keys are within 1/255 of the full tables'
# smooth curves for display purposes.
COLORMAPS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "turbo": (
        (0.18995, 0.07176, 0.23217),
        (0.25107, 0.25237, 0.63374),
        (0.27628, 0.42118, 0.89123),
        (0.25862, 0.57958, 0.99876),
        (0.15844, 0.73551, 0.92305),
        (0.09267, 0.86554, 0.76230),
        (0.19659, 0.94901, 0.59466),
        (0.42778, 0.99419, 0.38575),
        (0.64362, 0.98999, 0.23356),
        (0.80473, 0.92452, 0.20459),
        (0.93301, 0.81236, 0.22667),
        (0.99314, 0.67408, 0.20348),
        (0.99593, 0.50523, 0.14192),
        (0.94496, 0.34600, 0.07733),
        (0.84133, 0.21140, 0.02839),
        (0.68970, 0.10245, 0.00949),
        (0.47960, 0.01583, 0.01055),
    ),
    "viridis": (
        (0.26700, 0.00487, 0.32942),
        (0.28192, 0.08966, 0.41241),
        (0.27713, 0.18523, 0.48990),
        (0.25393, 0.26525, 0.52998),
        (0.22198, 0.33898, 0.54875),
        (0.19063, 0.40706, 0.55608),
        (0.16362, 0.47113, 0.55815),
        (0.13886, 0.53510, 0.55494),
        (0.12757, 0.56695, 0.55056),
        (0.12057, 0.62805, 0.53340),
        (0.16407, 0.69196, 0.50101),
        (0.24607, 0.75196, 0.45124),
        (0.36265, 0.80405, 0.38391),
        (0.49730, 0.85276, 0.30287),
        (0.64762, 0.88946, 0.20837),
        (0.81105, 0.91046, 0.11721),
        (0.99325, 0.90616, 0.14394),
    ),
}


def apply_colormap(x: Tensor, name: str = "turbo") -> Tensor:
    """Values ``[...]`` in [0, 1] (clamped) -> colours ``[..., 3]`` by linear interpolation of the key table."""
    if name not in COLORMAPS:
        raise OutputError(f"unknown colour map {name!r}", hint=f"use one of {', '.join(COLORMAPS)}")
    table = torch.tensor(COLORMAPS[name], dtype=torch.float32, device=x.device)
    n = table.shape[0] - 1
    u = torch.nan_to_num(x.float(), nan=0.0).clamp(0, 1) * n
    i0 = u.floor().long().clamp(max=n - 1)
    w = (u - i0.float()).unsqueeze(-1)
    return table[i0] * (1 - w) + table[i0 + 1] * w


_HEX = re.compile(r"#?([0-9a-fA-F]{6})")
_NAMED = {
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5),
    "grey": (0.5, 0.5, 0.5),
}


def parse_background(spec: str) -> tuple[float, float, float]:
    """``white``, ``black``, ``gray``, ``#rrggbb`` or ``r,g,b`` (each in [0, 1]) -> an RGB triple in [0, 1]."""
    s = spec.strip().lower()
    if s in _NAMED:
        return _NAMED[s]
    m = _HEX.fullmatch(s)
    if m:
        h = m.group(1)
        return tuple(int(h[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]
    parts = s.split(",")
    if len(parts) == 3:
        try:
            vals = tuple(float(p) for p in parts)
        except ValueError:
            vals = ()
        if len(vals) == 3 and all(0.0 <= v <= 1.0 for v in vals):
            return vals  # type: ignore[return-value]
    raise OutputError(
        f"background {spec!r} is not a colour",
        hint="use white, black, gray, a hex colour like #203040, or r,g,b with values in 0..1",
    )
