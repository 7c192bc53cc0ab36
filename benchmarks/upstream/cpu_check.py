"""CPU dry run of the upstream harness on tiny random models: everything the GPU call does short of the GPU.

It copies upstream's source, applies ``offline.patch`` (``prep.py``), links ``checkpoints/`` to a
``model_views.py`` folder made from the project's tiny models, and runs ``run_upstream.sh`` (the same script
the GPU call runs) with ``A124_DRY_RUN=1``:

* textual inversion runs 2 real training steps (fp32, batch 2 at 64² on the CPU instead of fp16, 16 at 512²);
* each NeRF stage runs its published script: ``main.py`` parses the command line, builds upstream's 4D-grid
  NeRF, loads every prior through upstream's own loaders (SD 1.5 or ModelScope through ``DiffusionPipeline``,
  Zero123-XL through its ``Zero1to3StableDiffusionPipeline``, ControlNet-tile and the textual-inversion token),
  computes the text, reference-image and Zero123 embeddings, builds the datasets and the trainer, and stops at
  its first training step, writing the checkpoint the next stage loads (which ``prep.py rebase`` then moves to
  step 5000 / 15000).

Only for this dry run, the shipped textual-inversion token is replaced by one as wide as the tiny text
encoder, upstream's CUDA extensions (``_gridencoder``, ``_raymarching``: nvcc-built on the GPU
machine) are stub modules that fail if called, and where this machine's torchvision cannot load its compiled
operators (a CUDA torchvision beside a CPU torch) their fake-tensor registration is skipped.

It needs a Python with upstream's packages (diffusers 0.20.2 and the wheels of ``prepare_carry.sh``, plus
torch, torchvision, transformers, accelerate, opencv, scipy, pandas, einops, torchmetrics, tensorboard,
imageio-ffmpeg), not the project's virtual environment:

    python benchmarks/upstream/cpu_check.py --src UPSTREAM_TREE --views TINY_VIEWS --work /tmp/a124-cpu-check

``UPSTREAM_TREE``: ``git archive d546941`` of upstream, unpacked. ``TINY_VIEWS``: in the project's venv,
``animate124.models.tiny.build_tiny_repo`` for ``sd``, ``video``, ``controlnet`` and ``zero123``
(``layout="bennyguo"``, as ``make_random_models.py`` writes it) into ``M/<role>``, then
``python benchmarks/upstream/model_views.py --models M --out TINY_VIEWS`` (``--configs`` with a tiny
``stable-diffusion-v1-5--stable-diffusion-v1-5/safety_checker/config.json`` adds the safety checker).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import prep  # noqa: E402

STUB = '''"""cpu_check.py only: stands in for upstream's CUDA extension {name} (nvcc-built on the GPU machine)."""


def __getattr__(attr):
    raise RuntimeError("cpu_check: {name}." + attr + " needs the CUDA extension")
'''
TORCHVISION_SHIM = '''"""cpu_check.py only: a CUDA torchvision beside a CPU torch cannot register its compiled operators' fake
kernels; skip those registrations so that torchvision's Python parts import."""
import torch.library as _lib

_orig = _lib.register_fake


def _tolerant(op, *args, **kwargs):
    try:
        dec = _orig(op, *args, **kwargs)
    except RuntimeError:
        return lambda f: f

    def wrap(f):
        try:
            return dec(f)
        except RuntimeError:
            return f

    return wrap


_lib.register_fake = _tolerant
import torchvision  # noqa: E402,F401

_lib.register_fake = _orig
'''
STAGES = ("invert", "static", "dynamic", "refine")
CKPTS = {
    "static": "outputs-animate124/grid4d-magic123-run/static-panda-dance/checkpoints/static-panda-dance.pth",
    "dynamic": "outputs-animate124/grid4d-magic123-run/ms-dynamic-image-panda-dancerun/checkpoints/"
    "ms-dynamic-image-panda-dancerun.pth",
}


def _torchvision_loads() -> bool:
    r = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    return r.returncode == 0


def prepare(src: Path, views: Path, work: Path) -> tuple[Path, Path]:
    """The patched copy of upstream (``work/src``, checkpoints linked) and the stub-module folder."""
    if work.exists():
        shutil.rmtree(work)
    tree = work / "src"
    shutil.copytree(src, tree, ignore=shutil.ignore_patterns("benchmark", ".git"), symlinks=True)
    changed = prep.apply_patch(tree, (HERE / "offline.patch").read_text())
    print(f"offline.patch: {len(changed)} files patched")
    (tree / "checkpoints").symlink_to(views.resolve())
    _tiny_token(tree, views)
    stubs = work / "stubs"
    stubs.mkdir()
    for name in ("_gridencoder", "_raymarching"):
        (stubs / f"{name}.py").write_text(STUB.format(name=name))
    if not _torchvision_loads():
        (stubs / "sitecustomize.py").write_text(TORCHVISION_SHIM)
        print("torchvision's compiled operators do not load here: their fake registration is skipped")
    return tree, stubs


def _tiny_token(tree: Path, views: Path) -> None:
    """The shipped ``learned_embeds.bin`` holds a 768-d token (SD 1.5's width); give the tiny text encoder one
    of its own width under the same name (dry run only: the GPU run loads the shipped file)."""
    import torch

    path = tree / "data" / "panda-dance" / "learned_embeds.bin"
    (name,) = torch.load(path, map_location="cpu", weights_only=True).keys()
    cfg = json.loads((views / "stable-diffusion-v1-5" / "text_encoder" / "config.json").read_text())
    torch.save({name: torch.randn(int(cfg["hidden_size"])) * 0.02}, path)


def _events(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def check(tree: Path, out: Path, ti_steps: int) -> list[str]:
    """What went wrong in the dry run (empty when every stage did what it should)."""
    import torch

    problems = []
    for stage in STAGES:
        rc = (out / f"{stage}.rc").read_text().strip() if (out / f"{stage}.rc").exists() else "not run"
        events = _events(out / f"steps_{stage}.jsonl")
        kinds = [e["event"] for e in events]
        if rc != "0":
            problems.append(f"{stage}: exit {rc} (see {out / f'{stage}.log'})")
            continue
        if stage == "invert":
            if kinds.count("step") != ti_steps or "stop" not in kinds:
                problems.append(f"invert: expected {ti_steps} steps and a stop, got {kinds}")
        elif kinds[-2:] != ["begin", "dry_run_stop"]:
            problems.append(f"{stage}: expected begin, dry_run_stop; got {kinds}")
        print(f"{stage}: exit 0, events {kinds}")
    for stage, (step, epoch) in {"static": (5000, 50), "dynamic": (15000, 150)}.items():
        ckpt = tree / CKPTS[stage]
        if not ckpt.exists():
            problems.append(f"{stage}: no checkpoint {ckpt}")
            continue
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if (state["global_step"], state["epoch"]) != (step, epoch):
            problems.append(f"{stage}: checkpoint at step {state['global_step']}, epoch {state['epoch']}")
        print(f"{stage} checkpoint: {len(state['model'])} tensors, global step {state['global_step']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, required=True, help="upstream's source tree (git archive of d546941)")
    ap.add_argument("--views", type=Path, required=True, help="model_views.py's folder of tiny models")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    ap.add_argument("--ti-steps", type=int, default=2)
    args = ap.parse_args(argv)
    tree, stubs = prepare(args.src, args.views, args.work)
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{stubs}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(stubs)
    env.update(
        PY=sys.executable,
        WARMUP="0",
        STEPS=str(args.ti_steps),
        A124_DRY_RUN="1",
        TI_EXTRA_ARGS="--mixed_precision=no --train_batch_size=2 --resolution=64",
    )
    env.pop("UPSTREAM_SITE", None)
    out = args.work / "out"
    subprocess.run(["bash", str(HERE / "run_upstream.sh"), str(tree), str(out)], env=env, check=False)
    problems = check(tree, out, args.ti_steps)
    for p in problems:
        print(f"PROBLEM {p}")
    print("cpu_check: all stages reached their first step" if not problems else "cpu_check: FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
