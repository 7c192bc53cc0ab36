"""Fixtures of the mesh-export tests: analytic 4D scenes with exact surfaces, a glb reader, the validator.

* :class:`BallAndBox`: a ball rising and a box turning about the vertical, as a 4D density field with
  the exporter's field interface (``density(x, t)``, ``forward(x, t) -> FieldOutput``, ``bound``,
  ``dynamic``); ``sdf(x, t)`` is the exact signed distance to the true surface, and the albedo is painted
  on each object (it moves with it), so a texture that stays on the object can be checked.
* :class:`SplittingBalls`: two overlapping balls that move apart (one blob becomes two): the case one
  topology cannot follow.
* :func:`read_glb`: accessor arrays, the texture and the frames' positions and normals of an animated glb
  in world units, read back with pygltflib and numpy only (integer data of ``KHR_mesh_quantization``
  decoded by hand from the spec: component type, ``normalized``, the node's transform).
* :func:`gltf_validator`: the Khronos glTF validator (npm package ``gltf-validator``) through node, or
  None where node or the package is missing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from animate124.scene.fields import FieldOutput


def _times(x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    if t is None:
        return x.new_zeros(x.shape[0], 1)
    return t.reshape(-1, 1).float().expand(x.shape[0], 1)


class BallAndBox(torch.nn.Module):
    """σ = σ₀·sigmoid(−sdf/w): a ball (radius 0.16) rising by ``rise`` (0.2) and a box (half sides 0.15,
    0.11, 0.09) turning by ``turn`` degrees about +y, over t ∈ [0, 1]. The density level of the true surface is σ₀/2.

    ``w`` (0.02) is about half a lattice cell at the tests' 48³ grid: the profile is smooth enough for
    marching cubes' linear interpolation to place the surface to a small fraction of a cell.
    """

    dynamic = True

    def __init__(
        self, sigma0: float = 100.0, width: float = 0.02, turn: float = 90.0, rise: float = 0.2
    ) -> None:
        super().__init__()
        self.bound = 1.0
        self.sigma0, self.width, self.turn = sigma0, width, turn
        self.radius, self.rise = 0.16, rise
        self.ball0 = torch.tensor([-0.27, -0.1, 0.0])
        self.box0 = torch.tensor([0.25, 0.0, 0.0])
        self.half = torch.tensor([0.15, 0.11, 0.09])

    @property
    def level(self) -> float:
        return self.sigma0 / 2

    def ball_local(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        tt = _times(x, t)
        return x - self.ball0 - torch.cat([torch.zeros_like(tt), self.rise * tt, torch.zeros_like(tt)], 1)

    def box_local(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        """``x`` in the box's own frame (the inverse of its rotation about +y by ``turn·t``)."""
        a = torch.deg2rad(self.turn * _times(x, t)[:, 0])
        p = x - self.box0
        c, s = torch.cos(a), torch.sin(a)
        return torch.stack([c * p[:, 0] - s * p[:, 2], p[:, 1], s * p[:, 0] + c * p[:, 2]], 1)

    def parts(self, x: torch.Tensor, t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Signed distances ``[N]`` to the ball and to the box."""
        x = x.float()
        d_ball = self.ball_local(x, t).norm(dim=1) - self.radius
        q = self.box_local(x, t).abs() - self.half
        d_box = q.clamp_min(0).norm(dim=1) + q.max(dim=1).values.clamp_max(0)
        return d_ball, d_box

    def sdf(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return torch.minimum(*self.parts(x, t))

    def density(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.sigma0 * torch.sigmoid(-self.sdf(x, t) / self.width)

    def local_albedo(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Colour painted on the objects: a smooth function of the point in the object's own frame."""
        x = x.float()
        d_ball, d_box = self.parts(x, t)
        on_ball = (d_ball < d_box)[:, None]
        a_ball = 0.5 + 0.4 * torch.tanh(self.ball_local(x, t) / self.radius)
        a_box = 0.5 + 0.4 * torch.tanh(self.box_local(x, t) / self.half)
        return torch.where(on_ball, a_ball, a_box)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> FieldOutput:
        return FieldOutput(sigma=self.density(x, t), albedo=self.local_albedo(x, t))


class SplittingBalls(BallAndBox):
    """Two balls of radius 0.2 whose centres go from ±0.1 to ±0.45 along x: one blob at t = 0, two apart
    from t ≈ 0.3."""

    def sdf(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        x = x.float()
        c = 0.1 + 0.35 * _times(x, t)
        off = torch.cat([c, torch.zeros_like(c), torch.zeros_like(c)], 1)
        return torch.minimum((x - off).norm(dim=1), (x + off).norm(dim=1)) - 0.2

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> FieldOutput:
        return FieldOutput(sigma=self.density(x, t), albedo=torch.full((x.shape[0], 3), 0.6))


# ------------------------------------------------------------------------------------------ glb reader
# Written from the glTF 2.0 spec and the KHR_mesh_quantization text, independently of animate124's writer.
_COMPONENTS = {
    5120: np.int8,
    5121: np.uint8,
    5122: np.int16,
    5123: np.uint16,
    5125: np.uint32,
    5126: np.float32,
}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def accessor_array(doc, blob: bytes, index: int) -> np.ndarray:
    """The stored values of accessor ``index`` as ``[count, width]`` in their component type: a buffer
    view's ``byteStride`` is honoured, and an accessor without a buffer view is zeros (the spec)."""
    acc = doc.accessors[index]
    dtype = np.dtype(_COMPONENTS[acc.componentType])
    width = _WIDTH[acc.type]
    if acc.bufferView is None:
        assert acc.sparse is None
        return np.zeros((acc.count, width), dtype)
    view = doc.bufferViews[acc.bufferView]
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    stride = view.byteStride or dtype.itemsize * width
    rows = np.frombuffer(
        blob, np.uint8, count=(acc.count - 1) * stride + dtype.itemsize * width, offset=start
    )
    rows = np.lib.stride_tricks.as_strided(rows, (acc.count, dtype.itemsize * width), (stride, 1))
    return np.ascontiguousarray(rows).view(dtype).reshape(acc.count, width)


def accessor_values(doc, blob: bytes, index: int) -> np.ndarray:
    """The accessor's values as float64: a normalised integer decoded as the spec says (signed:
    ``max(c / (2^(b−1) − 1), −1)``, unsigned: ``c / (2^b − 1)``), anything else as stored."""
    acc = doc.accessors[index]
    arr = accessor_array(doc, blob, index)
    if not acc.normalized:
        return arr.astype(np.float64)
    info = np.iinfo(arr.dtype)
    return np.maximum(arr.astype(np.float64) / info.max, -1.0)


def _local_matrix(node) -> np.ndarray:
    if node.matrix is not None:
        return np.asarray(node.matrix, np.float64).reshape(4, 4).T  # column-major in the file
    t = np.eye(4)
    if node.translation is not None:
        t[:3, 3] = node.translation
    r = np.eye(4)
    if node.rotation is not None:
        x, y, z, w = node.rotation
        r[:3, :3] = [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    sc = np.diag([*(node.scale or [1.0, 1.0, 1.0]), 1.0])
    return t @ r @ sc


def node_world_matrix(doc, index: int) -> np.ndarray:
    """The 4×4 world matrix of node ``index`` (its parents' matrices times its own TRS or matrix)."""
    parent = {c: i for i, n in enumerate(doc.nodes) for c in (n.children or [])}
    m = _local_matrix(doc.nodes[index])
    while index in parent:
        index = parent[index]
        m = _local_matrix(doc.nodes[index]) @ m
    return m


def target_accessor(tg, name: str) -> int:
    """A morph target's accessor of attribute ``name`` (pygltflib reads targets as dicts)."""
    return tg.get(name) if isinstance(tg, dict) else getattr(tg, name)


def read_glb(path: Path) -> dict:
    """Mesh data of a one-mesh glb in world units: base ``positions``, ``uv``, ``faces``, texture image, and
    each frame's ``frames`` (positions) and ``normals`` (unit), morph targets applied (base + that frame's
    target, in the mesh's own units, then the mesh node's world matrix; normals by its inverse transpose);
    the animation's ``key_times`` and ``key_weights``; ``position_accessors`` (base first, then targets')."""
    import pygltflib
    from PIL import Image

    doc = pygltflib.GLTF2().load(str(path))
    blob = doc.binary_blob()
    prim = doc.meshes[0].primitives[0]
    (node,) = [i for i, n in enumerate(doc.nodes) if n.mesh == 0]
    world = node_world_matrix(doc, node)
    lin, shift = world[:3, :3], world[:3, 3]
    normal_matrix = np.linalg.inv(lin).T

    def place(local: np.ndarray) -> np.ndarray:
        return local @ lin.T + shift

    def orient(local: np.ndarray) -> np.ndarray:
        n = local @ normal_matrix.T
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    base = accessor_values(doc, blob, prim.attributes.POSITION)
    base_n = accessor_values(doc, blob, prim.attributes.NORMAL)
    out: dict = {"doc": doc, "positions": place(base), "world": world}
    out["faces"] = accessor_array(doc, blob, prim.indices).reshape(-1, 3).astype(np.int64)
    if prim.attributes.TEXCOORD_0 is not None:
        out["uv"] = accessor_values(doc, blob, prim.attributes.TEXCOORD_0)
        view = doc.bufferViews[doc.images[0].bufferView]
        png = blob[view.byteOffset : view.byteOffset + view.byteLength]
        out["texture"] = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    if prim.attributes.COLOR_0 is not None:
        out["colors"] = accessor_array(doc, blob, prim.attributes.COLOR_0)
    targets = prim.targets or []
    out["position_accessors"] = [prim.attributes.POSITION] + [target_accessor(t, "POSITION") for t in targets]
    dp = [accessor_values(doc, blob, target_accessor(t, "POSITION")) for t in targets]
    dn = [accessor_values(doc, blob, target_accessor(t, "NORMAL")) for t in targets]
    out["frames"] = [place(base + d) for d in dp] or [out["positions"]]
    out["normals"] = [orient(base_n + d) for d in dn] or [orient(base_n)]
    if doc.animations:
        sampler = doc.animations[0].samplers[0]
        out["key_times"] = accessor_values(doc, blob, sampler.input)[:, 0]
        out["key_weights"] = accessor_values(doc, blob, sampler.output).reshape(len(out["key_times"]), -1)
    return out


# ------------------------------------------------------------------------------------------ validator
_NODE_SCRIPT = """
const fs = require('fs');
const validator = require(process.argv[1]);
validator.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])), {maxIssues: 200})
  .then((r) => { process.stdout.write(JSON.stringify(r)); })
  .catch((e) => { process.stderr.write(String(e)); process.exit(3); });
"""


def _validator_package() -> Path | None:
    """The ``gltf-validator`` npm package: ``$GLTF_VALIDATOR`` (its folder), else the global npm root."""
    env = os.environ.get("GLTF_VALIDATOR")
    if env:
        return Path(env) if (Path(env) / "package.json").is_file() else None
    npm = shutil.which("npm")
    if npm is None:
        return None
    try:
        root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    pkg = Path(root) / "gltf-validator"
    return pkg if (pkg / "package.json").is_file() else None


def gltf_validator():
    """A function ``path -> report dict`` running the Khronos validator, or a string saying why there is none."""
    node = shutil.which("node")
    if node is None:
        return "node is not installed"
    pkg = _validator_package()
    if pkg is None:
        return "the npm package gltf-validator is not installed (npm install -g gltf-validator)"

    def validate(path: Path) -> dict:
        res = subprocess.run(
            [node, "-e", _NODE_SCRIPT, str(pkg), str(path)], capture_output=True, text=True, timeout=120
        )
        if res.returncode != 0:
            raise RuntimeError(f"gltf-validator failed on {path}: {res.stderr.strip()}")
        return json.loads(res.stdout)

    return validate
