"""Draw examples/toy.png: a shaded toy (sphere body, cone hat) on a transparent background.

Made by this project (no third-party data); used by the README's offline smoke run.
Run: python examples/make_toy.py
"""

from pathlib import Path

import numpy as np
from PIL import Image

S = 256
yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / (S - 1) * 2 - 1
rgba = np.zeros((S, S, 4), np.float32)
light = np.array([-0.4, -0.5, 0.77])
light /= np.linalg.norm(light)
# body: sphere of radius 0.55 centred at (0, 0.2)
r2 = xx**2 + (yy - 0.2) ** 2
body = r2 < 0.55**2
nz = np.sqrt(np.clip(0.55**2 - r2, 0, None)) / 0.55
n = np.stack([xx / 0.55, (yy - 0.2) / 0.55, nz], -1)
shade = np.clip((n * light).sum(-1), 0, 1) * 0.8 + 0.2
rgba[body, :3] = (np.array([0.9, 0.35, 0.2]) * shade[..., None])[body]
rgba[body, 3] = 1
# hat: a triangle above the body
hat = (yy < -0.25) & (yy > -0.85) & (np.abs(xx) < (yy + 0.85) * 0.6)
rgba[hat, :3] = np.array([0.2, 0.45, 0.9]) * (0.75 + 0.25 * (xx[hat, None] < 0))
rgba[hat, 3] = 1
out = Path(__file__).with_name("toy.png")
Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA").save(out, optimize=True)
print(out, out.stat().st_size, "bytes")
