"""The sections of the output commands (`render`, `export`, `evaluate`); part of the schema (schema.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from animate124.config.fields import opt


@dataclass(frozen=True)
class RenderConfig:
    """SPEC section 7 (fixed): output videos and frames of `animate124 render`."""

    size: int = opt(400, "Output resolution (square frames, pixels).", min=8, max=4096)
    views: int = opt(10, "Fixed views around the object.", min=1, max=64)
    frames: int = opt(64, "Time steps per view (t = k/frames).", min=1, max=10_000)
    orbit_frames: int = opt(
        120, "Frames of the orbit video (camera and time move together).", min=2, max=10_000
    )
    orbit_loops: int = opt(1, "Times the motion plays during one orbit of the camera.", min=1)
    fps: int = opt(25, "Video frame rate.", min=1, max=240)
    polar: float = opt(
        90.0,
        "Camera polar angle in degrees (90 = level; the CLI's --elevation is 90 - polar).",
        min=0.0,
        max=180.0,
    )
    radius: float = opt(1.8, "Camera distance.", min=0.1, max=100.0)
    fovy: float = opt(40.0, "Vertical field of view in degrees.", min=1.0, max=170.0)
    background: str = opt("white", "Background: white, black, a #rrggbb colour or r,g,b in 0..1.")
    depth_colormap: Literal["turbo", "viridis"] = opt(
        "turbo", "Colour map of depth videos (near/far fixed over the whole video)."
    )
    ray_chunk: int = opt(
        32768,
        "Rays rendered per call: bounds the memory of large renders on a CPU or a small GPU.",
        min=64,
        max=2**26,
    )
    sample_chunk: int = opt(
        131072,
        "Samples per field call in output renders (bounds memory; 0 = all samples of a ray chunk).",
        min=0,
        max=2**30,
    )
    quality: int = opt(8, "MP4 quality, 0-10 (imageio's scale; 8 as upstream).", min=0, max=10)


@dataclass(frozen=True)
class ExportConfig:
    """`animate124 export`: meshes from the field by marching cubes on the density."""

    resolution: int = opt(256, "Marching-cubes grid cells per axis over the scene box.", min=16, max=1024)
    threshold: float = opt(
        0.0,
        "Density iso-level; 0 = auto: the level whose silhouette matches the rendered one (opacity 0.5).",
        min=0.0,
    )
    frames: int = opt(16, "Frames of the motion of a 4D field (t = k/frames).", min=1, max=1024)
    fps: int = opt(8, "Playback rate of the animated .glb.", min=1, max=240)
    decimate: float = opt(
        1.0, "Keep this fraction of the triangles (quadric decimation); 1 = no decimation.", min=0.01, max=1.0
    )
    max_faces: int = opt(
        20000,
        "At most this many triangles per exported mesh (quadric decimation); 0 = no limit.",
        min=0,
        max=2**26,
    )
    format: Literal["ply", "obj"] = opt(
        "ply", "File format of the per-frame mesh sequence (flipbook) or mesh."
    )
    animated: bool = opt(
        True,
        "4D stages: one mesh whose vertices follow the motion (glTF morph targets); false: a flipbook of a "
        "separate mesh per frame.",
    )
    texture: Literal["atlas", "vertex"] = opt(
        "atlas", "Colour of the .glb mesh: albedo baked into a UV-atlas texture, or vertex colours."
    )
    texture_size: int = opt(1024, "Side in texels of the baked albedo texture.", min=64, max=8192)
    reference_time: float = opt(
        0.0,
        "Animated mesh: topology and texture from the frame nearest this time in [0, 1].",
        min=0.0,
        max=1.0,
    )
    fit_iters: int = opt(
        100, "Animated mesh: Adam steps fitting its vertices to each frame's surface.", min=0, max=10000
    )
    fit_tolerance: float = opt(
        0.05,
        "Animated mesh: largest distance from a frame's surface (fraction of the object's size) before the "
        "export warns that one mesh cannot follow the motion.",
        min=0.0,
        max=1.0,
    )
    quantize: bool = opt(
        True,
        "Store the .glb mesh's vertex data as 16/8-bit integers (glTF KHR_mesh_quantization: a frame costs "
        "8-12 bytes a vertex instead of 24); false: 32-bit floats, for viewers without the extension.",
    )
    interpolation: Literal["linear", "step"] = opt(
        "linear", "Animated mesh: blend between frames (linear) or hold each frame (step) when played."
    )
    turntable: int = opt(
        192, "Tile size in pixels of the turntable pictures of the exported mesh; 0 = none.", min=0, max=1024
    )
    silhouette_views: int = opt(8, "Views used to choose the auto threshold.", min=1, max=64)
    silhouette_size: int = opt(64, "Resolution of those silhouette renders.", min=8, max=512)


@dataclass(frozen=True)
class EvaluateConfig:
    """`animate124 evaluate`: CLIP and reference-view metrics of a trained stage."""

    frames: int = opt(16, "Time steps rendered per view (t = k/frames).", min=2, max=1024)
    views: int = opt(
        4, "Views around the object for CLIP-T (the reference view is one of them).", min=1, max=64
    )
    size: int = opt(
        224, "Render resolution of the CLIP metrics (CLIP resizes to its own input size).", min=16, max=2048
    )
    ref_size: int = opt(256, "Render resolution of the reference-view PSNR/SSIM.", min=16, max=2048)
