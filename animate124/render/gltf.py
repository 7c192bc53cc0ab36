"""Binary glTF 2.0 (``.glb``) files of the exported meshes, written with pygltflib.

Two layouts:

* :func:`save_animated_glb`: **one mesh** whose vertices move. The base positions are one frame's (the
  reference frame); every frame k is a morph target holding ``positions_k − base`` and
  ``normals_k − base normals``, and one animation drives the mesh's morph weights: at key k (time
  ``k/fps``) weight k is 1 and the others 0, STEP (hold) or LINEAR (blend to the next frame); a last
  key at ``N/fps`` holds the last frame for one frame's time, as the flipbook and the videos do. With
  one frame there are no targets and no animation (a static mesh). The surface colour is a baked
  texture (``TEXCOORD_0`` + a PNG in the file, ``baseColorTexture``) or vertex colours (``COLOR_0``).
  ``mesh.extras.targetNames`` names the targets ``frame_000``… (Blender's importer makes them shape
  keys of those names). With a :class:`~animate124.render.quantize.PositionGrid` the vertex data are
  integers (``KHR_mesh_quantization``, listed as used and required; :mod:`animate124.render.quantize`):
  positions ``SHORT`` and each frame's deltas ``BYTE`` or ``SHORT`` on the grid, normals and their deltas
  normalised ``BYTE`` (float deltas for a frame whose normals turned too far for the extension's [−1, 1]),
  every element padded to 4 bytes; a target equal to the base (the base frame's own) is an accessor with
  no data, which the spec defines as zeros; the grid's translation and uniform scale sit on a leaf node
  under the named one; the animation's weights are normalised bytes and the indices 16-bit where they fit
  (both core glTF). A frame then costs 8 B a vertex where its deltas fit bytes, 12 B otherwise, against
  24 B as floats; the fallback for viewers without the extension is the float layout.
* :func:`save_flipbook_glb`: one mesh node per frame under a root node; an animation with STEP
  interpolation sets a frame's scale to 1 while it is shown and 0 otherwise (the static scene shows
  frame 0). Every frame has its own topology, so the file grows by a whole mesh per frame.

Spec points kept (glTF 2.0, checked by the Khronos validator in the tests): POSITION accessors, those of
morph targets included, carry ``min``/``max``; normals are unit length; vertex attributes are 4-byte
aligned; ``COLOR_0`` is *linear* (the albedo, which is sRGB-encoded like the images it was trained on, is
decoded), while the base-colour texture is sRGB, as the spec says for each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from animate124.fileio import atomic_path
from animate124.render.quantize import PositionGrid, decode_byte, quantize_delta, quantize_unit

__all__ = ["QUANTIZATION", "AnimatedMesh", "save_animated_glb", "save_flipbook_glb", "srgb_to_linear"]

#: The glTF extension of the integer vertex data (listed as used and required where written).
QUANTIZATION = "KHR_mesh_quantization"


@dataclass
class AnimatedMesh:
    """What :func:`save_animated_glb` writes.

    ``positions [N,V,3]`` float32 (N frames of the same ``faces [F,3]``), ``normals [N,V,3]`` unit
    vectors, ``base`` the frame whose positions are the mesh's own; ``uv [V,2]`` in [0,1] (glTF
    convention: (0,0) is the image's top-left) with ``texture_png`` (PNG bytes), or ``colors [V,3]``
    uint8 sRGB albedo; ``times [N]`` of the frames (kept in ``extras``).
    """

    positions: np.ndarray
    normals: np.ndarray
    faces: np.ndarray
    base: int = 0
    uv: np.ndarray | None = None
    texture_png: bytes | None = None
    colors: np.ndarray | None = None
    times: Sequence[float] | None = None


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0,1] -> linear values (IEC 61966-2-1)."""
    c = np.asarray(c, np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


class _Builder:
    """One binary buffer, its views and accessors (each view 4-byte aligned)."""

    def __init__(self) -> None:
        import pygltflib as gl

        self.gl = gl
        self.blob = bytearray()
        self.views: list[Any] = []
        self.accessors: list[Any] = []

    def view(self, data: bytes, target: int | None = None, stride: int | None = None) -> int:
        while len(self.blob) % 4:
            self.blob.append(0)
        self.views.append(
            self.gl.BufferView(
                buffer=0, byteOffset=len(self.blob), byteLength=len(data), target=target, byteStride=stride
            )
        )
        self.blob.extend(data)
        return len(self.views) - 1

    def accessor(
        self,
        arr: np.ndarray,
        comp: int,
        typ: str,
        target: int | None = None,
        *,
        minmax: bool = False,
        normalized: bool = False,
    ) -> int:
        arr = np.ascontiguousarray(arr)
        acc = self.gl.Accessor(
            bufferView=self.view(arr.tobytes(), target),
            componentType=comp,
            count=int(arr.shape[0]),
            type=typ,
            normalized=normalized or None,
        )
        if minmax:
            flat = arr.reshape(arr.shape[0], -1)
            acc.min = [float(x) for x in flat.min(axis=0)]
            acc.max = [float(x) for x in flat.max(axis=0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def int_vec3(self, arr: np.ndarray, *, normalized: bool = False, minmax: bool = False) -> int:
        """A ``VEC3`` vertex attribute of int8 or int16 ``arr [V,3]``, each element padded to 4 bytes (the
        spec's alignment of vertex attributes: stride 4 for bytes, 8 for shorts). All zeros: an accessor
        with no buffer view, which the spec defines as zeros (a frame equal to the base costs nothing)."""
        gl = self.gl
        comp = {np.dtype(np.int8): gl.BYTE, np.dtype(np.int16): gl.SHORT}[arr.dtype]
        acc = gl.Accessor(
            componentType=comp, count=int(arr.shape[0]), type=gl.VEC3, normalized=normalized or None
        )
        if not arr.any():
            acc.byteOffset = None  # no buffer view, no offset (the spec makes one depend on the other)
        else:
            padded = np.zeros((arr.shape[0], 4), arr.dtype)
            padded[:, :3] = arr
            acc.bufferView = self.view(padded.tobytes(), gl.ARRAY_BUFFER, stride=4 * arr.dtype.itemsize)
        if minmax:
            acc.min = [float(x) for x in arr.min(axis=0)] if len(arr) else [0.0] * 3
            acc.max = [float(x) for x in arr.max(axis=0)] if len(arr) else [0.0] * 3
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def vec3(self, arr: np.ndarray, minmax: bool = False) -> int:
        gl = self.gl
        return self.accessor(arr.astype(np.float32), gl.FLOAT, gl.VEC3, gl.ARRAY_BUFFER, minmax=minmax)

    def colors(self, rgb: np.ndarray) -> int:
        """``COLOR_0`` from sRGB uint8 albedo: linear, normalized unsigned short RGBA (4-byte aligned)."""
        gl = self.gl
        lin = srgb_to_linear(rgb.astype(np.float64) / 255.0)
        rgba = np.concatenate([lin, np.ones((len(lin), 1))], axis=1)
        q = np.round(rgba * 65535.0).astype(np.uint16)
        return self.accessor(q, gl.UNSIGNED_SHORT, gl.VEC4, gl.ARRAY_BUFFER, normalized=True)

    def indices(self, faces: np.ndarray, compact: bool = False) -> int:
        """Triangle indices: uint32, or with ``compact`` uint16 where every index is below 65535 (that
        value is the primitive-restart index, which the spec forbids in a triangle list)."""
        gl = self.gl
        if compact and (faces.size == 0 or int(faces.max()) < 65535):
            return self.accessor(
                faces.astype(np.uint16).reshape(-1), gl.UNSIGNED_SHORT, gl.SCALAR, gl.ELEMENT_ARRAY_BUFFER
            )
        flat = faces.astype(np.uint32).reshape(-1)
        return self.accessor(flat, gl.UNSIGNED_INT, gl.SCALAR, gl.ELEMENT_ARRAY_BUFFER)

    def save(self, path: Path, **doc: Any) -> Path:
        gl = self.gl
        gltf = gl.GLTF2(
            asset=gl.Asset(generator="animate124", version="2.0"),
            scene=0,
            accessors=self.accessors,
            bufferViews=self.views,
            buffers=[gl.Buffer(byteLength=len(self.blob))],
            **doc,
        )
        gltf.set_binary_blob(bytes(self.blob))
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"".join(gltf.save_to_bytes()))
        return path


def _unit(n: np.ndarray) -> np.ndarray:
    """Unit vectors; a zero vector (a vertex of no triangle's area) becomes +z, as glTF wants unit normals."""
    n = np.asarray(n, np.float64)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    out = np.where(norm > 1e-12, n / np.where(norm > 1e-12, norm, 1.0), [0.0, 0.0, 1.0])
    return out.astype(np.float32)


def _material(gl: Any, texture: int | None) -> Any:
    pbr = gl.PbrMetallicRoughness(
        baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0, roughnessFactor=1.0
    )
    if texture is not None:
        pbr.baseColorTexture = gl.TextureInfo(index=texture)
    return gl.Material(name="albedo", pbrMetallicRoughness=pbr, doubleSided=True)


def _key_times(n: int, fps: float) -> np.ndarray:
    """Keys at ``k/fps`` for the n frames plus one at ``n/fps`` (the last frame lasts 1/fps too)."""
    return np.arange(n + 1, dtype=np.float32) / float(fps)


def _float_geometry(b: _Builder, pos: np.ndarray, nrm: np.ndarray, base: int) -> tuple[int, int, list[Any]]:
    """Float32 base POSITION/NORMAL and per-frame deltas: ``(position, normal, targets)``."""
    gl = b.gl
    base_pos = pos[base].astype(np.float32)
    base_nrm = _unit(nrm[base])
    targets = []
    if len(pos) > 1:
        for k in range(len(pos)):
            dp = (pos[k].astype(np.float64) - base_pos).astype(np.float32)
            dn = (_unit(nrm[k]).astype(np.float64) - base_nrm).astype(np.float32)
            targets.append(gl.Attributes(POSITION=b.vec3(dp, minmax=True), NORMAL=b.vec3(dn)))
    return b.vec3(base_pos, minmax=True), b.vec3(base_nrm), targets


def _quantized_geometry(
    b: _Builder, pos: np.ndarray, nrm: np.ndarray, base: int, grid: PositionGrid
) -> tuple[int, int, list[Any]]:
    """Integer base POSITION/NORMAL and per-frame deltas (:mod:`animate124.render.quantize`)."""
    from animate124.render.mesh import MeshError

    q = grid.encode(pos)  # [N,V,3]
    qb = q[base]
    if np.abs(qb).max(initial=0) > 32767 or np.abs(q - qb).max(initial=0) > 32767:
        raise MeshError("the positions do not fit the quantisation grid's 16 bits")
    nb = quantize_unit(_unit(nrm[base]))
    nb_decoded = decode_byte(nb)
    targets = []
    if len(pos) > 1:
        for k in range(len(pos)):
            dq = q[k] - qb
            small = np.abs(dq).max(initial=0) <= 127
            p_acc = b.int_vec3(dq.astype(np.int8 if small else np.int16), minmax=True)
            dn = _unit(nrm[k]).astype(np.float64) - nb_decoded
            dn_q = quantize_delta(dn)
            n_acc = b.vec3(dn) if dn_q is None else b.int_vec3(dn_q, normalized=True)
            targets.append(b.gl.Attributes(POSITION=p_acc, NORMAL=n_acc))
    return b.int_vec3(qb.astype(np.int16), minmax=True), b.int_vec3(nb, normalized=True), targets


def save_animated_glb(
    path: Path,
    mesh: AnimatedMesh,
    *,
    fps: float = 8.0,
    interpolation: str = "LINEAR",
    name: str = "animate124",
    grid: PositionGrid | None = None,
) -> Path:
    """One mesh with one morph target per frame and an animation of its weights (module docstring).

    ``grid``: store the vertex data as integers on it (``KHR_mesh_quantization``; the positions written are
    ``grid.snap(positions)``); None: 32-bit floats, for viewers without the extension."""
    from animate124.render.mesh import MeshError

    b = _Builder()
    gl = b.gl
    pos, nrm, faces = mesh.positions, mesh.normals, mesh.faces
    if pos.ndim != 3 or pos.shape[0] < 1 or pos.shape[2] != 3 or nrm.shape != pos.shape:
        raise MeshError(f"positions/normals must be [N,V,3] alike, got {pos.shape} and {nrm.shape}")
    if (mesh.uv is None) != (mesh.texture_png is None):
        raise MeshError("a texture needs both uv and the PNG")
    if interpolation not in ("LINEAR", "STEP"):
        raise MeshError(f"interpolation {interpolation!r} is not LINEAR or STEP")
    n = pos.shape[0]
    base = int(mesh.base)
    if grid is None:
        p_acc, n_acc, targets = _float_geometry(b, pos, nrm, base)
    else:
        p_acc, n_acc, targets = _quantized_geometry(b, pos, nrm, base, grid)
    attrs = gl.Attributes(POSITION=p_acc, NORMAL=n_acc)
    textures: list[Any] = []
    images: list[Any] = []
    samplers: list[Any] = []
    if mesh.uv is not None and mesh.texture_png is not None:
        uv = mesh.uv.astype(np.float32)
        attrs.TEXCOORD_0 = b.accessor(uv, gl.FLOAT, gl.VEC2, gl.ARRAY_BUFFER)
        images.append(gl.Image(bufferView=b.view(mesh.texture_png), mimeType="image/png", name="albedo"))
        samplers.append(
            gl.Sampler(
                magFilter=gl.LINEAR,
                minFilter=gl.LINEAR_MIPMAP_LINEAR,
                wrapS=gl.CLAMP_TO_EDGE,
                wrapT=gl.CLAMP_TO_EDGE,
            )
        )
        textures.append(gl.Texture(source=0, sampler=0))
    elif mesh.colors is not None:
        attrs.COLOR_0 = b.colors(mesh.colors)
    indices = b.indices(faces, compact=grid is not None)
    prim = gl.Primitive(attributes=attrs, indices=indices, material=0, targets=targets or None)
    extras: dict[str, Any] = {"frames": n, "base_frame": base}
    if n > 1:
        extras["targetNames"] = [f"frame_{k:03d}" for k in range(n)]
    if mesh.times is not None:
        extras["times"] = [float(t) for t in mesh.times]
    if grid is not None:
        extras["position_step"] = grid.step
    gmesh = gl.Mesh(name=name, primitives=[prim], extras=extras)
    if n > 1:
        gmesh.weights = [1.0 if k == base else 0.0 for k in range(n)]
    if grid is None:
        nodes = [gl.Node(name=name, mesh=0)]
    else:  # the decoding transform on a leaf node, so the named node moves the object as users expect
        leaf = gl.Node(name=f"{name}-mesh", mesh=0, translation=list(grid.origin), scale=[grid.step] * 3)
        nodes = [gl.Node(name=name, children=[1]), leaf]
    animations = []
    if n > 1:
        keys = _key_times(n, fps)
        w = np.zeros((n + 1, n), np.float32)
        w[np.arange(n), np.arange(n)] = 1.0
        w[n, n - 1] = 1.0
        if grid is None:
            out = b.accessor(w.reshape(-1), gl.FLOAT, gl.SCALAR)
        else:  # weights are 0 or 1: exact as normalised bytes (core glTF allows them for weights)
            out = b.accessor(
                w.reshape(-1).astype(np.uint8) * 255, gl.UNSIGNED_BYTE, gl.SCALAR, normalized=True
            )
        sampler = gl.AnimationSampler(
            input=b.accessor(keys, gl.FLOAT, gl.SCALAR, minmax=True), output=out, interpolation=interpolation
        )
        target = gl.AnimationChannelTarget(node=len(nodes) - 1, path="weights")
        channel = gl.AnimationChannel(sampler=0, target=target)
        animations.append(gl.Animation(name="motion", samplers=[sampler], channels=[channel]))
    doc: dict[str, Any] = {}
    if grid is not None:
        doc = {"extensionsUsed": [QUANTIZATION], "extensionsRequired": [QUANTIZATION]}
    return b.save(
        path,
        scenes=[gl.Scene(nodes=[0])],
        nodes=nodes,
        meshes=[gmesh],
        materials=[_material(gl, 0 if textures else None)],
        textures=textures,
        images=images,
        samplers=samplers,
        animations=animations,
        **doc,
    )


def save_flipbook_glb(path: Path, meshes: Sequence[Any], fps: float = 8.0, name: str = "animate124") -> Path:
    """One node per :class:`~animate124.render.mesh.Mesh`, shown in turn (module docstring); one mesh: a
    plain scene with that mesh."""
    from animate124.render.mesh import MeshError, vertex_normals

    if not meshes:
        raise MeshError("no meshes to write")
    b = _Builder()
    gl = b.gl
    gmeshes, nodes = [], [gl.Node(name=name, children=[])]
    animated = len(meshes) > 1
    for i, m in enumerate(meshes):
        attrs = gl.Attributes(
            POSITION=b.vec3(m.vertices, minmax=True),
            NORMAL=b.vec3(_unit(vertex_normals(m.vertices, m.faces))),
        )
        if m.colors is not None:
            attrs.COLOR_0 = b.colors(m.colors)
        prim = gl.Primitive(attributes=attrs, indices=b.indices(m.faces), material=0)
        gmeshes.append(gl.Mesh(name=f"frame_{i:03d}", primitives=[prim]))
        node = gl.Node(name=f"frame_{i:03d}" if animated else name, mesh=i)
        if animated:
            node.scale = [1.0, 1.0, 1.0] if i == 0 else [0.0, 0.0, 0.0]
            node.extras = {"time": m.time}
        nodes.append(node)
        nodes[0].children.append(len(nodes) - 1)
    animations = []
    if animated:
        n = len(meshes)
        inp = b.accessor(_key_times(n, fps), gl.FLOAT, gl.SCALAR, minmax=True)
        samplers, channels = [], []
        for i in range(n):
            on = np.zeros((n + 1, 3), np.float32)
            on[i] = 1.0
            if i == n - 1:
                on[n] = 1.0
            samplers.append(
                gl.AnimationSampler(input=inp, output=b.accessor(on, gl.FLOAT, gl.VEC3), interpolation="STEP")
            )
            channels.append(
                gl.AnimationChannel(sampler=i, target=gl.AnimationChannelTarget(node=i + 1, path="scale"))
            )
        animations.append(gl.Animation(name="motion", samplers=samplers, channels=channels))
    return b.save(
        path,
        scenes=[gl.Scene(nodes=[0])],
        nodes=nodes,
        meshes=gmeshes,
        materials=[_material(gl, None)],
        animations=animations,
    )
