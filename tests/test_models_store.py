"""Registry and ModelStore: sources, offline errors, fast download failure, verify, describe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from animate124.errors import DownloadError, ModelNotFoundError
from animate124.models.registry import (
    KNOWN_REPOS,
    ROLES,
    WEIGHT_FILE_NAMES,
    pick_weight_files,
    spec_for,
)
from animate124.models.store import ModelStore, _env_key
from animate124.models.tiny import build_tiny_cache, build_tiny_repo

REPO_ROOT = Path(__file__).resolve().parents[1]
HF_CONFIGS = (REPO_ROOT / ".." / "shared" / "data" / "hf-configs").resolve()


@pytest.fixture(autouse=True)
def _no_model_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("ANIMATE124_MODEL_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> Path:
    """Tiny cache of two cheap roles (the full-cache tests live in test_models_loaders.py)."""
    return build_tiny_cache(
        tmp_path_factory.mktemp("small"), roles=["controlnet", "depth"], alternatives=False
    )


# ----------------------------------------------------------------------------------------- registry


def test_registry_roles_and_licences():
    assert set(ROLES) == {"sd", "zero123", "video", "controlnet", "depth", "segment", "matting", "clip"}
    for role, spec in ROLES.items():
        assert spec.role == role and "/" in spec.repo_id and spec.licence != "unknown", role
        assert spec.revision == "main" or len(spec.revision) == 40
    assert "NON-COMMERCIAL" in ROLES["video"].licence_note
    assert "NON-COMMERCIAL" in KNOWN_REPOS["cerspense/zeroscope_v2_576w"].licence_note
    assert "runwayml/stable-diffusion-v1-5" in ROLES["sd"].aliases
    assert "damo-vilab/text-to-video-ms-1.7b" in ROLES["video"].aliases
    assert ROLES["zero123"].alternatives["kxic"] == "kxic/zero123-xl"
    assert ROLES["video"].alternatives["zeroscope"] == "cerspense/zeroscope_v2_576w"


def _manifest_files(name: str) -> list[str]:
    path = HF_CONFIGS / name / "_file_manifest.json"
    if not path.is_file():
        pytest.skip(f"shared data absent: {path}")
    return [f["path"] for f in json.loads(path.read_text())["files"]]


@pytest.mark.parametrize(
    ("folder", "role"),
    [("stable-diffusion-v1-5--stable-diffusion-v1-5", "sd"), ("ali-vilab--text-to-video-ms-1.7b", "video")],
)
def test_allow_patterns_match_real_repo_listing(folder, role):
    """Every allowed file exists in the real repo; weights are exactly the fp16 safetensors that
    pick_weight_files chooses; no root single-file checkpoint is fetched."""
    files = _manifest_files(folder)
    spec = ROLES[role]
    assert all(p in files for p in spec.allow_patterns), set(spec.allow_patterns) - set(files)
    listed_weights = sorted(p for p in spec.allow_patterns if Path(p).name in WEIGHT_FILE_NAMES)
    picked = sorted(pick_weight_files(files, spec.ignore_patterns))
    assert picked == listed_weights
    assert all(".fp16.safetensors" in p for p in picked) and len(picked) == 3
    assert not any(
        p.endswith((".ckpt", "pruned.safetensors", "emaonly.safetensors")) for p in spec.allow_patterns
    )


def test_pick_weight_files_prefers_and_ignores():
    files = [
        "config.json", "diffusion_pytorch_model.bin",  # ControlNet tile: .bin only
        "unet/diffusion_pytorch_model.bin", "zs2_576w/text2video_pytorch_model.pth",
        "zs2_576w/open_clip_pytorch_model.bin", "image_encoder/model.safetensors", "image_encoder/pytorch_model.bin",
        "unet2/diffusion_pytorch_model.fp16_ema.safetensors", "unet2/diffusion_pytorch_model.fp16.safetensors",
    ]  # fmt: skip
    assert pick_weight_files(files, ("zs2_576w/*",)) == [
        "diffusion_pytorch_model.bin", "image_encoder/model.safetensors", "unet/diffusion_pytorch_model.bin",
        "unet2/diffusion_pytorch_model.fp16.safetensors",
    ]  # fmt: skip


def test_spec_for_unknown_repo_keeps_layout_and_autopicks():
    spec = spec_for("sd", "someone/sd15-finetune", "v2")
    assert spec.repo_id == "someone/sd15-finetune" and spec.revision == "v2" and spec.auto_weights
    assert "unet/config.json" in spec.allow_patterns
    assert not any(Path(p).name in WEIGHT_FILE_NAMES for p in spec.allow_patterns)
    assert (
        spec_for("zero123", "kxic/zero123-xl").allow_patterns[-1]
        == "cc_projection/diffusion_pytorch_model.bin"
    )


# ----------------------------------------------------------------------------------------- sources


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("ANIMATE124_CACHE", str(tmp_path / "env"))
    assert ModelStore().cache_dir == tmp_path / "env"
    assert ModelStore(cache_dir=tmp_path / "arg").hub_dir == tmp_path / "arg" / "hub"
    monkeypatch.delenv("ANIMATE124_CACHE")
    assert ModelStore().cache_dir.name == "animate124"


def test_override_precedence(monkeypatch, tmp_path):
    assert _env_key("sd", None) == "ANIMATE124_MODEL_SD"
    assert _env_key("video", "zeroscope") == "ANIMATE124_MODEL_VIDEO_ZEROSCOPE"
    local = tmp_path / "my-sd"
    local.mkdir()
    store = ModelStore(cache_dir=tmp_path)
    assert store.source("sd").spec.repo_id == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert store.source("sd").origin == "default"
    monkeypatch.setenv("ANIMATE124_MODEL_SD", "someone/other-sd@abc")
    src = store.source("sd")
    assert (src.spec.repo_id, src.spec.revision, src.origin) == ("someone/other-sd", "abc", "env")
    src = ModelStore(cache_dir=tmp_path, overrides={"sd": str(local)}).source("sd")
    assert src.local_dir == local.resolve() and src.origin == "override"
    monkeypatch.setenv("ANIMATE124_MODEL_VIDEO_ZEROSCOPE", str(local))
    assert store.source("video", "zeroscope").local_dir == local.resolve()
    assert store.source("video").local_dir is None
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        ModelStore(cache_dir=tmp_path, overrides={"sd": str(tmp_path / "nope")}).source("sd")


def test_local_override_is_used_as_is(small_cache, tmp_path):
    folder = build_tiny_repo("controlnet", tmp_path / "cn")
    store = ModelStore(cache_dir=tmp_path / "empty", offline=True, overrides={"controlnet": str(folder)})
    assert store.resolve("controlnet") == folder.resolve()
    (folder / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(ModelNotFoundError, match="lacks"):
        store.resolve("controlnet")


# ----------------------------------------------------------------------------------------- offline errors


def test_missing_model_offline_is_fast_and_clear(tmp_path):
    store = ModelStore(cache_dir=tmp_path, offline=True)
    t0 = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        store.resolve("zero123")
    assert time.monotonic() - t0 < 5
    text = str(info.value)
    assert "zero123" in text and "ashawkey/zero123-xl-diffusers" in text
    assert "animate124 models download zero123" in text
    assert not store.is_cached("zero123") and store.cached_size("zero123") is None
    with pytest.raises(ModelNotFoundError, match="models download video --alternative zeroscope"):
        store.resolve("video", "zeroscope")


def test_download_offline_fails_fast(tmp_path):
    store = ModelStore(cache_dir=tmp_path, offline=True)
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="offline"):
        store.download("controlnet")
    assert time.monotonic() - t0 < 2


def test_download_cached_needs_no_network(small_cache):
    store = ModelStore(cache_dir=small_cache, offline=True)
    assert store.download("depth") == store.resolve("depth")


def test_concurrent_downloads_of_one_role_fetch_once(tmp_path, monkeypatch):
    """Two downloaders of one role share the per-role lock: one fetches, the other waits and then
    finds the files cached (no second download, no half-written snapshot seen)."""
    import threading

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("ANIMATE124_OFFLINE", raising=False)
    fetched = []

    def fake_download(self, src, role, progress):
        fetched.append(role)
        time.sleep(0.3)  # the other thread reaches the lock meanwhile
        build_tiny_cache(self.cache_dir, roles=[role], alternatives=False)
        return self.resolve(role)

    monkeypatch.setattr(ModelStore, "_download", fake_download)
    results, errors = [], []

    def worker():
        try:
            results.append(
                ModelStore(cache_dir=tmp_path, offline=False).download("controlnet", progress=False)
            )
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    assert fetched == ["controlnet"]


_SUBPROC = """
import sys, time
from animate124.errors import DownloadError
from animate124.models.store import ModelStore
t0 = time.monotonic()
try:
    ModelStore(cache_dir=sys.argv[1], offline=False).download("controlnet", progress=False)
except DownloadError as err:
    print("DownloadError", round(time.monotonic() - t0, 2), err)
else:
    print("no error")
"""


@pytest.mark.parametrize("proxy", [None, "http://127.0.0.1:9"], ids=["preflight", "via-hub-client"])
def test_download_unreachable_hub_fails_fast(tmp_path, proxy):
    """Without a proxy the TCP pre-flight refuses; with one, huggingface_hub's own error is wrapped."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "ANIMATE124_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(REPO_ROOT))
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        env.pop(k, None)
    if proxy:
        env["HTTPS_PROXY"] = env["HTTP_PROXY"] = proxy
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", _SUBPROC, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    wall = time.monotonic() - t0
    assert out.stdout.startswith("DownloadError"), out.stdout + out.stderr
    assert float(out.stdout.split()[1]) < 10 and wall < 30
    assert ("127.0.0.1:9" in out.stdout) if proxy is None else ("control_v11f1e_sd15_tile" in out.stdout)


# ----------------------------------------------------------------------------------------- verify / describe


def test_verify_good_and_deleted_weight(tmp_path):
    cache = build_tiny_cache(tmp_path, roles=["controlnet", "depth"], alternatives=False)
    store = ModelStore(cache_dir=cache, offline=True)
    assert store.verify("controlnet") == [] and store.verify("depth") == []
    (store.resolve("depth") / "model.safetensors").unlink()
    problems = store.verify("depth")
    assert any("missing <weights>" in p for p in problems)
    assert not store.is_cached("depth")
    with pytest.raises(ModelNotFoundError, match="incomplete"):
        store.resolve("depth")


def test_verify_truncated_files(tmp_path):
    cache = build_tiny_cache(tmp_path, roles=["controlnet", "depth"], alternatives=False)
    store = ModelStore(cache_dir=cache, offline=True)
    for role, name in (("depth", "model.safetensors"), ("controlnet", "diffusion_pytorch_model.bin")):
        f = store.resolve(role) / name
        data = f.read_bytes()
        f.write_bytes(data[: len(data) - 100])
        problems = store.verify(role)
        assert len(problems) == 1 and name in problems[0], problems


def test_verify_sha256_of_blob_layout(tmp_path):
    """Real HF caches store LFS files as blobs/<sha256> with relative symlinks: verify hashes them."""
    import hashlib

    cache = build_tiny_cache(tmp_path, roles=["depth"], alternatives=False)
    store = ModelStore(cache_dir=cache, offline=True)
    snap = store.resolve("depth")
    blobs = snap.parent.parent / "blobs"
    blobs.mkdir()
    weight = snap / "model.safetensors"
    digest = hashlib.sha256(weight.read_bytes()).hexdigest()
    (blobs / digest).write_bytes(weight.read_bytes())
    weight.unlink()
    weight.symlink_to(os.path.relpath(blobs / digest, snap))
    assert store.verify("depth") == []
    raw = bytearray((blobs / digest).read_bytes())
    raw[-1] ^= 0xFF  # same size, header intact, content changed
    (blobs / digest).write_bytes(bytes(raw))
    problems = store.verify("depth")
    assert len(problems) == 1 and "sha256 mismatch" in problems[0]
    assert store.verify("depth", hashes=False) == []


def test_describe_rows(small_cache):
    rows = {r["role"]: r for r in ModelStore(cache_dir=small_cache, offline=True).describe()}
    assert set(rows) == set(ROLES)
    assert rows["controlnet"]["cached"] and rows["controlnet"]["size"] > 100_000
    assert not rows["sd"]["cached"] and rows["sd"]["size"] is None
    assert rows["video"]["licence"] == "CC-BY-NC-4.0"
    assert rows["sd"]["repo"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
