"""Every command through Typer's CliRunner: help, options, exit codes and messages."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from animate124.cli.app import app
from animate124.engine.checkpoint import load_latest_checkpoint
from animate124.stages.spec import STAGE_NAMES

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy.png"
runner = CliRunner()

COMMANDS = [
    ["preprocess"],
    ["invert"],
    ["static"],
    ["dynamic"],
    ["refine"],
    ["run-all"],
    ["batch"],
    ["render"],
    ["export"],
    ["evaluate"],
    ["report"],
    ["doctor"],
    ["models", "list"],
    ["models", "download"],
    ["models", "path"],
    ["models", "verify"],
    ["config", "show"],
    ["config", "fields"],
    ["config", "presets"],
]


def invoke(*args: str, cwd: Path | None = None):
    if cwd is not None:
        old = os.getcwd()
        os.chdir(cwd)
    try:
        return runner.invoke(app, list(args), env={"COLUMNS": "200"})
    finally:
        if cwd is not None:
            os.chdir(old)


def test_top_help_is_fast():
    # CPU seconds of the child, not wall time: a loaded machine (CI neighbours) stretches the wall clock,
    # importing torch does not fit in 1.5 CPU seconds on any machine this runs on
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [sys.executable, "-m", "animate124.cli.app", "--help"], capture_output=True, text=True
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert out.returncode == 0 and "run-all" in out.stdout
    assert cpu < 1.5, f"--help took {cpu:.2f} CPU seconds"
    # and neither the app nor any command's help imports the heavy libraries
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from typer.testing import CliRunner\n"
            "from animate124.cli.app import app\n"
            "for cmd in (['run-all'], ['invert'], ['render'], ['export'], ['evaluate'], ['report'],\n"
            "            ['models', 'list'], ['config', 'show'], ['batch']):\n"
            "    assert CliRunner().invoke(app, [*cmd, '--help']).exit_code == 0\n"
            "print(*(m in sys.modules for m in ('torch', 'diffusers', 'transformers', 'ray')))",
        ],
        capture_output=True,
        text=True,
    )
    assert probe.stdout.split() == ["False", "False", "False", "False"], probe.stderr


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help_with_examples(cmd):
    r = invoke(*cmd, "--help")
    assert r.exit_code == 0, r.output
    assert "Examples" in r.output
    assert "SPEC" not in r.output  # users do not have the team's SPEC: help describes the behaviour


def test_app_help_documents_exit_codes():
    r = invoke("--help")
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    for code in (
        "0 success",
        "1 runtime error",
        "2 usage or config error",
        "130 interrupted",
        "143 by SIGTERM",
    ):
        assert code in text, code


def test_choice_options_show_their_choices():
    r = invoke("run-all", "--help")
    assert "<paper|fast|low-vram|tiny>" in r.output
    assert "[auto|cpu|cuda|cuda:N]" in r.output
    stages = "<" + "|".join(STAGE_NAMES) + ">"
    assert r.output.count(stages) == 2  # --from and --until list exactly the registered stages


def test_stage_command_help_comes_from_the_registry():
    from animate124.stages.spec import STAGES

    r = invoke("--help")
    text = " ".join(r.output.split())
    for stage in STAGES:
        assert stage.summary[0].upper() + stage.summary[1:10] in text, stage.name


def test_help_lists_stages_then_outputs_then_tools():
    r = invoke("--help")
    listed = re.findall(r"^│ ([a-z][a-z-]*) ", r.output, flags=re.MULTILINE)
    assert listed == [
        *[n for n in STAGE_NAMES if n != "render"],
        "run-all",
        "batch",
        "render",
        "export",
        "evaluate",
        "report",
        "models",
        "config",
        "doctor",
    ]


def test_render_help_says_it_works_as_typed_after_run_all():
    text = " ".join(invoke("render", "--help").output.split())
    assert "`animate124 render --orbit` works as typed right after `animate124 run-all IMAGE PROMPT`" in text
    assert "Default: the config the stage was trained with" in text


def test_flags_are_shown_as_flags():
    """A boolean option takes no value: --help shows `--orbit`, not `--orbit <bool>`."""
    r = invoke("render", "--help")
    assert r.exit_code == 0 and "--orbit" in r.output and "--gif" in r.output
    assert "<bool>" not in r.output
    for cmd in COMMANDS:
        assert "<bool>" not in invoke(*cmd, "--help").output, cmd


def test_version():
    r = invoke("--version")
    assert r.exit_code == 0 and "animate124" in r.output


def test_config_show_and_bad_set():
    r = invoke("config", "show", "--preset", "tiny", "--set", "static.iters=3")
    assert r.exit_code == 0 and "iters: 3" in r.output
    r = invoke("config", "show", "--set", "static.itrs=3")
    assert r.exit_code == 2 and "static.itrs" in r.output
    r = invoke("config", "show", "--preset", "nope")
    assert r.exit_code == 2 and "'nope' is not one of" in r.output and "low-vram" in r.output
    r = invoke("config", "show", "--set", "scene.num_levels=4")
    assert r.exit_code == 2 and "field" in r.output  # old section names say the new one
    r = invoke("config", "presets")
    assert r.exit_code == 0 and "low-vram" in r.output


def test_preprocess_bad_inputs(tmp_path):
    r = invoke("preprocess", str(tmp_path / "missing.png"), "-p", str(tmp_path / "p"))
    assert r.exit_code == 2 and "not found" in r.output
    assert not (tmp_path / "p").exists()  # nothing created for a bad input
    txt = tmp_path / "notes.png"
    txt.write_text("not an image")
    r = invoke("preprocess", str(txt), "-p", str(tmp_path / "p"))
    assert r.exit_code == 2 and "error" in r.output.lower()


@pytest.mark.parametrize(
    "args",
    [["--device", "banana"], ["--set", "run.device=banana"], ["--device", "cuda:7"]],
    ids=["option", "set", "missing-gpu"],
)
def test_bad_device_is_refused_before_the_project_exists(tmp_path, args):
    for cmd in (["preprocess", str(TOY)], ["run-all", str(TOY), "a toy is spinning"]):
        r = invoke(*cmd, "-p", str(tmp_path / "p"), "--preset", "tiny", *args)
        assert r.exit_code == 2, r.output
        assert "device" in r.output and "Traceback" not in r.output
        assert not (tmp_path / "p").exists()


def test_cuda_on_a_cpu_machine_is_refused_before_the_project_exists(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = invoke("preprocess", str(TOY), "-p", str(tmp_path / "p"), "--preset", "tiny", "--device", "cuda")
    assert r.exit_code == 2 and "no usable CUDA GPU" in r.output
    assert not (tmp_path / "p").exists()


def test_project_path_that_is_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    for args in (["preprocess", str(TOY)], ["invert"], ["static"], ["render"]):
        r = invoke(*args, "-p", str(f), "--preset", "tiny")
        assert r.exit_code == 1, (args, r.output)
        assert "is a file" in r.output and "internal error" not in r.output, r.output
    r = invoke("preprocess", str(TOY), "-p", str(f / "sub"), "--preset", "tiny")
    assert r.exit_code == 1 and "is a file" in r.output
    assert f.read_text() == "x"


def test_stage_without_project(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMATE124_STATE_DIR", str(tmp_path / "empty-state"))
    for cmd in ("static", "dynamic", "refine", "invert", "render"):
        r = invoke(cmd, cwd=tmp_path)
        assert r.exit_code == 1, (cmd, r.output)
        assert "no project given and none found" in r.output


def test_prompt_problems_are_usage_errors_before_any_work(tmp_path):
    proj = tmp_path / "p"
    cases = {
        "   ": "prompt is empty",
        "🐼 is dancing": "--subject",
        "🐼💃": "--subject",
        "a <token> is dancing": "<token>",
        " ".join(["a panda is dancing"] + ["happily"] * 500): "tokens long",
    }
    for prompt, message in cases.items():
        r = invoke("run-all", str(TOY), prompt, "-p", str(proj), "--preset", "tiny")
        assert r.exit_code == 2 and message in r.output, (prompt[:30], r.output)
        assert not proj.exists()
    r = invoke("run-all", str(TOY), "a toy", "-p", str(proj), "--until", "nowhere")
    assert r.exit_code == 2 and "nowhere" in r.output
    r = invoke("run-all", str(TOY), "a toy", "-p", str(proj), "--from", "static", "--until", "invert")
    assert r.exit_code == 2 and "comes after" in r.output
    assert not proj.exists()


def test_models_list_shows_every_role(tmp_path):
    r = invoke("models", "list", "--cache-dir", str(tmp_path / "c"))
    assert r.exit_code == 0, r.output
    for role in ("sd", "zero123", "video", "controlnet", "depth", "matting", "segment", "clip"):
        assert role in r.output
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in r.output
    assert "CC-BY-NC" in r.output


def test_models_path_missing_is_clear(tmp_path):
    r = invoke("models", "path", "sd", "--cache-dir", str(tmp_path / "c"))
    assert r.exit_code == 1
    assert "animate124 models download sd" in r.output


def test_models_download_without_hub_fails_fast(tmp_path):
    env = {
        **os.environ,
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "0",
        "ANIMATE124_OFFLINE": "0",
    }
    t0 = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "animate124.cli.app",
            "models",
            "download",
            "sd",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    dt = time.perf_counter() - t0
    assert out.returncode == 1, out.stdout + out.stderr
    assert dt < 10, f"took {dt:.1f} s"
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in out.stderr and "'sd'" in out.stderr


def test_doctor():
    r = invoke("doctor")
    assert r.exit_code == 0, r.output
    assert "torch" in r.output and "model sd" in r.output


def test_out_of_memory_is_a_message_with_the_memory_settings(tmp_path, monkeypatch):
    """A CUDA OOM anywhere in a command becomes OutOfMemoryError's message and hint, exit 1."""
    import torch

    import animate124.stages.static as static

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(static, "run_static", oom)
    from animate124.project import Project

    p = Project(tmp_path / "p")
    p.create()
    p.update_stage("preprocess", status="done")  # what the pre-flight asks of the static stage
    r = invoke("static", "-p", str(tmp_path / "p"), "--preset", "tiny", "--prompt", "a toy")
    assert r.exit_code == 1, r.output
    assert "out of GPU memory" in r.output and "--preset low-vram" in r.output
    assert "internal error" not in r.output


def test_no_interactive_prompt_anywhere():
    """Batch use: nothing in the package asks a question on the terminal."""
    pattern = re.compile(
        r"typer\.(prompt|confirm)|click\.(prompt|confirm)|Confirm\.ask|Prompt\.ask|\binput\(|prompt=True"
    )
    hits = [
        f"{p.relative_to(REPO)}:{i}"
        for p in (REPO / "animate124").rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_run_all_tiny_then_invert_render_and_static(tmp_path, monkeypatch):
    """The README's smoke run, split: run-all up to preprocess, a standalone invert, then run-all again
    finds everything up to date (both derive the initializer from the project's subject)."""
    monkeypatch.setenv("ANIMATE124_STATE_DIR", str(tmp_path / "state"))
    r = invoke(
        "run-all", str(TOY), "a toy is spinning", "--preset", "tiny", "--until", "preprocess", cwd=tmp_path
    )
    assert r.exit_code == 0, r.output
    assert "static prompt: a high-resolution DSLR image of a toy" in r.output
    assert "refine prompt: a <token> is spinning" in r.output and "subject: toy" in r.output
    proj = tmp_path / "runs" / "toy"
    r = invoke("invert", "--preset", "tiny", "-q", cwd=tmp_path)  # finds the most recent project
    assert r.exit_code == 0, r.output
    assert (
        json.loads((proj / "manifest.json").read_text())["stages"]["invert"]["metrics"]["initializer"]
        == "toy"
    )
    for f in (
        "manifest.json",
        "preprocess/rgba.png",
        "preprocess/depth.png",
        "invert/learned_embeds.safetensors",
    ):
        assert (proj / f).is_file(), f
    r = invoke(
        "run-all", str(TOY), "a toy is spinning", "--preset", "tiny", "--until", "invert", cwd=tmp_path
    )
    assert r.exit_code == 0, r.output
    assert "preprocess: up to date" in r.output and "invert: up to date" in r.output
    # render finds the most recent project and says there is nothing trained yet
    r = invoke("render", "--orbit", cwd=tmp_path)
    assert r.exit_code == 1 and "no training stage has finished" in r.output
    # the static stage runs on the most recent project with the prompt recorded by run-all
    r = invoke("static", "--preset", "tiny", "-q", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert (proj / "static" / "model.safetensors").is_file()
    assert (proj / "static" / "previews" / "latest.png").is_file()
    assert (proj / "logs" / "static.jsonl").is_file()


@pytest.mark.parametrize("name", ["rgba.png", "image.jpg"])
def test_preprocess_cli_on_upstream_example(name, shared_data, tmp_path):
    """`animate124 preprocess` on the upstream panda example, with and without alpha (tiny models)."""
    import numpy as np
    from PIL import Image

    src = shared_data / "animate124" / "panda-dance" / name
    proj = tmp_path / "p"
    r = invoke("preprocess", str(src), "-p", str(proj), "--preset", "tiny")
    assert r.exit_code == 0, r.output
    side = max(Image.open(src).size)
    rgba = np.asarray(Image.open(proj / "preprocess" / "rgba.png"))
    depth = np.asarray(Image.open(proj / "preprocess" / "depth.png"))
    depth_f = np.load(proj / "preprocess" / "depth.npy")
    assert rgba.shape == (side, side, 4) and rgba.dtype == np.uint8
    assert depth.shape == (side, side) and depth.dtype == np.uint8
    assert depth_f.shape == (side, side) and depth_f.dtype == np.float32
    assert depth_f.min() >= 0.0 and depth_f.max() <= 1.0
    fg = rgba[..., 3] > 0
    assert (depth[~fg] == 0).all() and (depth_f[~fg] == 0).all()
    if fg.any():
        assert depth_f[fg].max() == pytest.approx(1.0)
    assert (proj / "preprocess" / "preview.png").is_file()
    manifest = (proj / "manifest.json").read_text()
    assert '"matting_ran": ' + ("false" if name == "rgba.png" else "true") in manifest


def test_invert_interrupt_and_resume(tmp_path):
    """Ctrl-C during `invert --force` checkpoints and exits 130 and says that the command without --force
    resumes; it does, and the log has each step once."""
    import signal

    proj = tmp_path / "p"
    env = {**os.environ, "COLUMNS": "200"}
    base = [sys.executable, "-m", "animate124.cli.app"]
    r = subprocess.run(
        base + ["preprocess", str(TOY), "-p", str(proj), "--preset", "tiny"], env=env, capture_output=True
    )
    assert r.returncode == 0, r.stderr
    cmd = base + [
        "invert",
        "-p",
        str(proj),
        "--preset",
        "tiny",
        "--steps",
        "30",
        "-s",
        "invert.checkpoint_every=2",
    ]
    proc = subprocess.Popen(
        [*cmd, "--force"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ckpt = proj / "invert" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not any(ckpt.glob("ckpt-*.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted" in err and "run the same command again without --force to resume" in " ".join(
        err.split()
    )
    rec = json.loads((proj / "manifest.json").read_text())["stages"]["invert"]
    assert rec["status"] == "interrupted"
    done_before = load_latest_checkpoint(ckpt).step
    assert 0 < done_before < 30
    # resume with fewer remaining steps: the total is what the config says
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed" in r.stdout
    rec = json.loads((proj / "manifest.json").read_text())["stages"]["invert"]
    assert rec["status"] == "done" and (proj / "invert" / "learned_embeds.safetensors").is_file()
    steps = [json.loads(line)["step"] for line in (proj / "logs" / "invert.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))


def test_the_cli_asks_for_expandable_cuda_segments_unless_the_user_set_the_allocator():
    code = "import os, animate124.cli.app; print(os.environ.get('PYTORCH_CUDA_ALLOC_CONF'))"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "expandable_segments:True"
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        mine = {**env, name: "max_split_size_mb:128"}
        out = subprocess.run(
            [sys.executable, "-c", code], env=mine, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == (
            "max_split_size_mb:128" if name == "PYTORCH_CUDA_ALLOC_CONF" else "None"
        )
