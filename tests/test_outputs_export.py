"""`animate124 export`: marching cubes on analytic fields, the silhouette-matching level, glb, the stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_outputs import ALBEDO, GaussianField, MovingSphereField, SphereField, trained_project

from animate124.errors import ConfigError
from animate124.render.cameras import camera_from_spherical
from animate124.render.gltf import save_flipbook_glb
from animate124.render.mesh import (
    Mesh,
    MeshError,
    decimate,
    density_volume,
    extract_mesh,
    marching_cubes,
    mesh_stats,
    save_mesh,
    silhouette_threshold,
)
from animate124.stages.export import QUANT_STEP_CELLS, run_export_stage
from animate124.stages.outputs import project_config


def _cams(size=48):
    polar = torch.tensor([90.0, 90.0, 90.0, 90.0, 45.0, 135.0])
    az = torch.tensor([0.0, 90.0, 180.0, 270.0, 30.0, 210.0])
    return camera_from_spherical(polar, az, 1.8, 40.0, size, size)


def _radii(mesh):
    return np.linalg.norm(mesh.vertices, axis=1)


def test_sphere_mesh_has_the_right_radius_is_closed_and_takes_the_albedo():
    f = SphereField(radius=0.5, density=200.0)  # σ = 100 exactly on the sphere of radius 0.5
    mesh = extract_mesh(f, 100.0, resolution=64)
    r = _radii(mesh)
    assert abs(r.mean() - 0.5) < 0.004 and r.min() > 0.49 and r.max() < 0.51
    stats = mesh_stats(mesh)
    assert stats["watertight"] and stats["faces"] > 1000
    assert np.all(mesh.colors == (np.array(ALBEDO) * 255 + 0.5).astype(np.uint8))
    # faces wound outward: every face normal points away from the centre
    v = mesh.vertices[mesh.faces]
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    assert np.all((n * v.mean(axis=1)).sum(axis=1) > 0)


def test_auto_level_matches_the_rendered_silhouette_of_a_soft_blob():
    """A Gaussian blob has no surface; the auto level must put the mesh where the renders' opacity is 0.5."""
    g = GaussianField(peak=60.0, s=0.2)
    tau = silhouette_threshold(g, _cams(), max_steps=512)
    mesh = extract_mesh(g, tau, resolution=64)
    assert abs(_radii(mesh).mean() - g.silhouette_radius()) < 0.01
    # a level chosen by hand (σ = 20) gives a visibly smaller object: the choice matters
    assert _radii(extract_mesh(g, 20.0, resolution=64)).mean() < g.silhouette_radius() - 0.05


def test_auto_level_of_a_hard_sphere_gives_the_sphere():
    """A sharp-edged ball renders as a disc of its own radius: the auto level finds that edge (to within
    marching cubes' interpolation of a step, about half a lattice cell at 128³)."""
    f = SphereField(radius=0.4, density=500.0, edge=0.001)
    tau = silhouette_threshold(f, _cams(), max_steps=1024)
    assert 0 < tau < 500
    assert abs(_radii(extract_mesh(f, tau, resolution=128)).mean() - 0.4) < 0.01


def test_empty_field_and_bad_levels_are_errors():
    empty = SphereField(radius=0.3, density=0.0)
    with pytest.raises(MeshError, match="empty"):
        silhouette_threshold(empty, _cams(16), max_steps=64)
    vol = density_volume(SphereField(radius=0.3), 16)
    with pytest.raises(MeshError, match="no surface"):
        marching_cubes(vol, 1e6, 1.0)
    with pytest.raises(MeshError, match="positive"):
        marching_cubes(vol, 0.0, 1.0)


def test_density_volume_skips_unoccupied_cells():
    from animate124.scene.occupancy import OccupancyGrid

    f = SphereField(radius=0.3)
    occ = OccupancyGrid(resolution=8, num_slots=1)
    occ.bitfield.zero_()
    occ.bitfield.view(8, 8, 8)[4:, :, :] = True  # only x > 0 is occupied
    vol = density_volume(f, 32, occupancy=occ)
    axis = np.linspace(-1, 1, 33)
    assert vol[axis < -0.3].max() == 0  # x < -0.25 (outside the dilated cells) is empty
    assert vol[16, 16, 16] > 100  # the centre is kept


def test_decimation_keeps_about_the_fraction_and_the_shape():
    f = SphereField(radius=0.5, density=200.0)
    mesh = extract_mesh(f, 100.0, resolution=48)
    small = extract_mesh(f, 100.0, resolution=48, keep=0.25)
    assert 0.15 * len(mesh.faces) < len(small.faces) < 0.35 * len(mesh.faces)
    assert abs(_radii(small).mean() - 0.5) < 0.01 and small.colors.shape == (len(small.vertices), 3)
    v, fa = decimate(mesh.vertices, mesh.faces, 1.0)
    assert v is mesh.vertices and fa is mesh.faces


def test_animated_glb_loads_back_with_one_node_per_frame(tmp_path):
    import pygltflib
    import trimesh

    field = MovingSphereField(radius=0.3, amp=0.4)
    meshes = [extract_mesh(field, 100.0, resolution=32, t=t) for t in (0.0, 0.5, 0.999)]
    path = save_flipbook_glb(tmp_path / "motion.glb", meshes, fps=4)
    scene = trimesh.load(path)
    assert len(scene.geometry) == 3
    centres = [g.vertices.mean(axis=0)[0] for _, g in sorted(scene.geometry.items())]
    assert centres[0] < centres[1] < centres[2]  # the ball moves along +x
    doc = pygltflib.GLTF2().load(str(path))
    assert len(doc.animations) == 1 and len(doc.animations[0].channels) == 3
    assert {s.interpolation for s in doc.animations[0].samplers} == {"STEP"}
    assert all(c.target.path == "scale" for c in doc.animations[0].channels)
    times = doc.accessors[doc.animations[0].samplers[0].input]
    assert times.count == 4 and times.max == [pytest.approx(0.75)]
    assert [n.scale for n in doc.nodes[1:]] == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    prim = doc.meshes[0].primitives[0]
    assert prim.attributes.COLOR_0 is not None and prim.attributes.NORMAL is not None
    # colours come from the albedo at each time: red at t=0, blue at t≈1
    c0, c2 = meshes[0].colors.mean(axis=0), meshes[2].colors.mean(axis=0)
    assert c0[0] > 240 and c0[2] < 15 and c2[2] > 240 and c2[0] < 15


def test_single_mesh_files(tmp_path):
    import trimesh

    mesh = extract_mesh(SphereField(radius=0.5, density=200.0), 100.0, resolution=24)
    glb = save_flipbook_glb(tmp_path / "mesh.glb", [mesh])
    assert len(trimesh.load(glb).geometry) == 1
    for ext in ("ply", "obj"):
        p = save_mesh(tmp_path / f"mesh.{ext}", mesh)
        back = trimesh.load(p, process=True)
        assert back.is_watertight
        assert np.allclose(back.visual.vertex_colors[:, :3].mean(axis=0), np.array(ALBEDO) * 255, atol=1.0)
    with pytest.raises(MeshError, match="format"):
        save_mesh(tmp_path / "mesh.stl", mesh)
    with pytest.raises(MeshError, match="no meshes"):
        save_flipbook_glb(tmp_path / "none.glb", [])
    assert isinstance(mesh, Mesh)


# ------------------------------------------------------------------------------------------ the stage
@pytest.fixture()
def project(tmp_path):
    return trained_project(tmp_path, ("static", "dynamic"))


def test_stage_dynamic_animated_mesh_follows_the_ball(project):
    """The default for a 4D stage: one mesh, a morph target per frame, fitted to the trained field's
    surface at each frame (the fixture's ball grows from t = 0 to t = 2/3), a texture, the fit error per
    frame in the manifest, and the turntable pictures."""
    from helpers_meshes import read_glb

    cfg = project_config(
        project,
        "dynamic",
        options={"export": {"resolution": 32, "frames": 3, "silhouette_size": 32, "texture_size": 128}},
    )
    res = run_export_stage(project, cfg, show_progress=False)
    out = project.export_dir / "dynamic"
    assert not (out / "frames").exists() and not (out / "flipbook.glb").exists()
    g = read_glb(out / "mesh.glb")
    assert len(g["doc"].meshes) == 1 and len(g["frames"]) == 3 and g["texture"].shape == (128, 128, 3)
    sizes = [np.linalg.norm(x, axis=1).mean() for x in g["frames"]]
    assert sizes[0] < sizes[1] < sizes[2]
    # each frame's mean radius is that of the frame's own marching-cubes surface, to a quarter lattice cell
    field = _trained_field(project, "dynamic")
    for k, x in enumerate(g["frames"]):
        ref = extract_mesh(field, res.metrics["threshold"], resolution=32, t=k / 3)
        assert abs(np.linalg.norm(x, axis=1).mean() - _radii(ref).mean()) < 0.25 * 2.0 / 32
    m = res.metrics
    assert m["mode"] == "animated" and m["frames"] == 3 and m["texture"] == "atlas" and m["fit_ok"]
    # integer vertex data (the default), on a grid of at most export.QUANT_STEP_CELLS of a lattice cell
    assert m["quantized"] and g["doc"].extensionsRequired == ["KHR_mesh_quantization"]
    cell = 2.0 * _trained_field(project, "dynamic").bound / 32
    assert 0 < m["position_step"] <= QUANT_STEP_CELLS * cell * (1 + 1e-6)
    assert len(m["fit_error_max"]) == 3 and max(m["fit_error_max"]) < 0.05 and m["reference_time"] == 0.0
    assert m["glb_bytes"] == (out / "mesh.glb").stat().st_size
    rec = project.stage_record("export")
    assert rec["status"] == "done"
    assert rec["outputs"]["export/dynamic/mesh.glb"]["kind"] == "animated_glb"
    assert rec["outputs"]["export/dynamic/turntable.png"]["kind"] == "turntable"
    assert rec["outputs"]["export/dynamic/turntable.mp4"]["kind"] == "turntable_video"
    import imageio.v3 as iio

    grid = iio.imread(out / "turntable.png")
    tile = cfg.export.turntable
    assert grid.shape[0] > 2 * tile and grid.shape[1] > 8 * tile  # two rows of 8 views
    assert (grid < 200).any(axis=2).mean() > 0.02  # the mesh is drawn, not a blank page


def _trained_field(project, stage):
    from animate124.stages.artifacts import load_trained

    return load_trained(project.artifact(f"{stage}_model"), "cpu").field.eval()


def test_stage_dynamic_flipbook_sequence_and_glb(project):
    import trimesh

    cfg = project_config(
        project,
        "dynamic",
        options={"export": {"resolution": 32, "frames": 3, "silhouette_size": 32, "animated": False}},
    )
    res = run_export_stage(project, cfg, show_progress=False)
    out = project.export_dir / "dynamic"
    assert sorted(p.name for p in (out / "frames").iterdir()) == [
        "frame_000.ply",
        "frame_001.ply",
        "frame_002.ply",
    ]
    assert len(trimesh.load(out / "flipbook.glb").geometry) == 3
    m = res.metrics
    assert m["threshold_auto"] and m["threshold"] > 0 and m["frames"] == 3 and m["watertight"]
    assert m["mode"] == "flipbook" and "fit_error_max" not in m
    # the fixture ball grows from t=0 to t=2/3 (its grid tables are 0, 0.015, 0.03, 0.01 over time)
    sizes = [
        np.linalg.norm(trimesh.load(out / "frames" / f"frame_{k:03d}.ply").vertices, axis=1).mean()
        for k in range(3)
    ]
    assert sizes[0] < sizes[1] < sizes[2]
    rec = project.stage_record("export")
    assert rec["status"] == "done" and "export/dynamic/flipbook.glb" in rec["outputs"]
    # a shorter sequence afterwards leaves no stale frames; the earlier outputs stay listed while they exist
    cfg2 = project_config(
        project,
        "dynamic",
        options={"export": {"resolution": 24, "frames": 2, "silhouette_size": 32, "animated": False}},
    )
    run_export_stage(project, cfg2, show_progress=False)
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["frame_000.ply", "frame_001.ply"]


def test_stage_static_single_mesh_obj_and_fixed_level(project):
    cfg = project_config(
        project,
        "static",
        options={"export": {"resolution": 24, "threshold": 5.0, "format": "obj", "texture": "vertex"}},
    )
    res = run_export_stage(project, cfg, stage="static", show_progress=False)
    out = project.export_dir / "static"
    assert (out / "mesh.obj").is_file() and (out / "mesh.glb").is_file() and not (out / "frames").exists()
    assert res.metrics["threshold"] == 5.0 and not res.metrics["threshold_auto"]
    assert res.metrics["mode"] == "single" and res.metrics["texture"] == "vertex"
    assert (out / "turntable.png").is_file()
    # the glb's integer positions (the default) are the obj's to half a grid step; the grid of a still mesh
    # is the finest that holds it in 16 bits
    import trimesh
    from helpers_meshes import read_glb

    step = res.metrics["position_step"]
    obj = trimesh.load(out / "mesh.obj", process=False)
    g = read_glb(out / "mesh.glb")
    assert res.metrics["quantized"] and g["doc"].extensionsRequired == ["KHR_mesh_quantization"]
    assert step <= float(np.abs(obj.vertices - obj.bounds.mean(axis=0)).max()) / 32766 * (1 + 1e-6)
    assert g["positions"].shape == obj.vertices.shape
    assert np.abs(g["positions"] - obj.vertices).max() <= step / 2 + 1e-6


def test_max_faces_caps_the_mesh(project):
    cfg = project_config(
        project,
        "static",
        options={
            "export": {
                "resolution": 48,
                "threshold": 5.0,
                "max_faces": 300,
                "turntable": 0,
                "texture_size": 64,
            }
        },
    )
    res = run_export_stage(project, cfg, stage="static", show_progress=False)
    assert 200 <= res.metrics["faces"] <= 300
    assert not (project.export_dir / "static" / "turntable.png").exists()


def test_a_missing_mesh_package_is_found_before_any_work(project, monkeypatch):
    """The atlas's xatlas (or any mesh package) missing: a usage error naming it, before the field loads,
    and nothing written; the flipbook, which needs no atlas, is not stopped by it."""
    import importlib.util

    import animate124.stages.export as export_stage

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "xatlas" else real(n, *a))
    loaded = []
    monkeypatch.setattr("animate124.stages.artifacts.load_trained", lambda *a, **k: loaded.append(a))
    before = sorted(p.relative_to(project.root) for p in project.root.rglob("*"))
    cfg = project_config(project, "dynamic", options={"export": {"resolution": 24, "frames": 2}})
    with pytest.raises(ConfigError, match="export needs xatlas") as err:
        run_export_stage(project, cfg, stage="dynamic", show_progress=False)
    assert "export.texture=vertex" in err.value.hint and not loaded
    assert sorted(p.relative_to(project.root) for p in project.root.rglob("*")) == before
    flip = project_config(project, "dynamic", options={"export": {"animated": False}})
    export_stage.check_export_packages(flip.export, "dynamic")  # no atlas in a flipbook
    with pytest.raises(ConfigError, match="export needs xatlas"):
        export_stage.check_export_packages(flip.export, "static")  # a static mesh is one textured mesh
