"""The cases of the bad-input battery (``tests/battery.py`` runs them): what each one damages or gets
wrong, the command it runs, the exit codes it may give and the words its output must contain (what a case
is made of: ``battery_kit.py``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from battery_kit import (
    ARTIFACTS,
    BAD_UTF8,
    DAMAGES,
    DOWNSTREAM,
    PROMPT,
    STAGE_CMDS,
    TINY,
    UNTIL,
    Case,
    Ctx,
    all_of,
    both,
    cache_file,
    corrupt_kept,
    ctrl_c_in_stage,
    delete,
    edit_manifest,
    flip_byte,
    full_disk_under,
    interrupted,
    next_up_to_date,
    not_marked,
    on_ckpt,
    randomize,
    stage_cmd,
    status_is,
    to_directory,
    truncate,
    unchanged,
    unchanged_files,
    without_invert,
    write,
)

__all__ = ["cases"]


def cases() -> list[Case]:
    """Every case, in the order they run (the cheap refusals first)."""
    out: list[Case] = []
    for section in (
        _config_values,
        _config_files,
        _text_and_options,
        _damaged_artifacts,
        _project_files,
        _damaged_checkpoints,
        _model_cache,
        _export_options,
        _machine,
    ):
        section(out.append)
    return out


def _config_values(add: Callable[[Case], None]) -> None:
    """Bad --set values: bounds and types, on every command that reads a config (nothing may change)."""
    bad_sets = {
        "run.checkpoint_every=0": "run.checkpoint_every",
        "static.iters=99999999999999999999": "static.iters",
        "dynamic.iters=-3": "dynamic.iters",
        "static.iters=many": "static.iters",
        "static.lr=.nan": "static.lr",
        "dynamic.lr=.inf": "dynamic.lr",
        "camera.polar_range=[0,200]": "camera.polar_range",
        "camera.polar_range=[100,50]": "camera.polar_range",
        "render.size=0": "render.size",
        "render.fps=100000": "render.fps",
        "run.log_every=0": "run.log_every",
        "raymarch.update_interval=0": "raymarch.update_interval",
        "static.ref_interval=0": "static.ref_interval",
        "run.seed=-1": "run.seed",
        "field.level_dim=3": "field.level_dim",
        "loss.rgb=-1": "loss.rgb",
        "static.sd_t_range=[0.2,1.5]": "static.sd_t_range",
        "run.deterministic=maybe": "run.deterministic",
        "static.nope=1": "static.nope",
        "nosection.x=1": "nosection",
        "static.iters": "static.iters",
        "=3": "empty key",
    }
    commands = (
        "run-all",
        "static",
        "dynamic",
        "refine",
        "invert",
        "render",
        "export",
        "evaluate",
        "preprocess",
    )
    for i, (item, needle) in enumerate(bad_sets.items()):
        for cmd in (commands[i % len(commands)], commands[(i + 4) % len(commands)]):
            before: dict[str, bytes] = {}

            def snap(c: Ctx, before: dict[str, bytes] = before) -> None:
                before.update(
                    {
                        str(q.relative_to(c.project)): q.read_bytes()
                        for q in c.project.rglob("*")
                        if q.is_file()
                    }
                )

            force = () if cmd in ("export", "evaluate") else ("--force",)
            add(Case(f"set {item} on {cmd}", stage_cmd(cmd, "--set", item, *force), (2,), (needle,), setup=snap,
                     check=lambda c, out, before=before: unchanged_files(c, before)))  # fmt: skip
    add(
        Case(
            "config show with a huge int",
            ["config", "show", "-s", "invert.steps=1e30"],
            (2,),
            ("invert.steps",),
        )
    )
    add(Case("config show with an unknown preset", ["config", "show", "--preset", "nope"], (2,), ("nope",)))


def _config_files(add: Callable[[Case], None]) -> None:
    """-c files that are missing, folders, not UTF-8, not YAML or not a config."""
    cfiles = {
        "missing": (None, "does not exist"),
        "a directory": ("DIR", "is a directory"),
        "not UTF-8": (b"static:\n  iters: 3\n  prompt: \xff\xfe\n", "not UTF-8"),
        "not YAML": (b"static: [1, 2\n", "not valid YAML"),
        "a list": (b"- 1\n- 2\n", "mapping"),
        "binary": (bytes(range(256)) * 4, "config file"),
        "an unknown key": (b"static:\n  iterz: 3\n", "static.iterz"),
        "a mixed-key mapping": (b"1: 2\nstatic: {}\n", "unknown config key"),
        "a bad value": (b"render:\n  size: -5\n", "render.size"),
        "a null section": (b"static:\n", "config"),
    }
    for what, (data, needle) in cfiles.items():
        for cmd in ("run-all", "render", "static"):

            def setup(c: Ctx, data: bytes | str | None = data) -> None:
                if data == "DIR":
                    (c.work / "cfg.yaml").mkdir()
                elif data is not None:
                    (c.work / "cfg.yaml").write_bytes(data)

            codes = (0, 2) if what == "a null section" else (2,)
            add(
                Case(
                    f"-c {what} on {cmd}",
                    stage_cmd(cmd, "-c", "cfg.yaml"),
                    codes,
                    () if codes == (0, 2) else (needle,),
                    setup=setup,
                )
            )


def _text_and_options(add: Callable[[Case], None]) -> None:
    """Text that is not text, empty or bad options, missing inputs, on every subcommand."""
    add(Case("run-all prompt with invalid UTF-8", ["run-all", "toy.png", BAD_UTF8, *TINY, "-p", "fresh"], (2,),
             ("not valid UTF-8",), check=lambda c, out: "fresh was created" if (c.work / "fresh").exists() else None))  # fmt: skip
    add(Case("run-all prompt with a NUL", ["run-all", "toy.png", "a toy\x00 spins", *TINY, "-p", "fresh"], (2,),
             ("control character",), check=lambda c, out: "fresh was created" if (c.work / "fresh").exists() else None))  # fmt: skip
    add(
        Case(
            "run-all prompt of escapes",
            ["run-all", "toy.png", "\x1b[31m\x1b[0m", *TINY, "-p", "fresh"],
            (2,),
            ("control",),
        )
    )
    add(Case("run-all empty prompt", ["run-all", "toy.png", "   ", *TINY, "-p", "fresh"], (2,), ("empty",)))
    add(
        Case(
            "run-all emoji prompt", ["run-all", "toy.png", "🐼💃", *TINY, "-p", "fresh"], (2,), ("--subject",)
        )
    )
    add(
        Case(
            "run-all subject with invalid UTF-8",
            ["run-all", "toy.png", PROMPT, "--subject", BAD_UTF8, *TINY],
            (2,),
            ("--subject",),
        )
    )
    add(
        Case(
            "run-all static prompt with a NUL",
            ["run-all", "toy.png", PROMPT, "--static-prompt", "a\x00", *TINY],
            (2,),
            ("--static-prompt",),
        )
    )
    add(Case("run-all prompt too long", ["run-all", "toy.png", "a toy is spinning " + "and spinning " * 60, "--preset", "paper", "-p", "fresh"],
             (2,), ("tokens",)))  # fmt: skip
    add(
        Case(
            "static prompt with invalid UTF-8",
            stage_cmd("static", "--prompt", BAD_UTF8),
            (2,),
            ("static.prompt",),
        )
    )
    add(Case("dynamic empty prompt", stage_cmd("dynamic", "--prompt", " "), (2,), ("empty",)))
    add(
        Case(
            "refine prompt with a tab and NUL",
            stage_cmd("refine", "--prompt", "a <token>\t\x00"),
            (2,),
            ("control",),
        )
    )
    add(
        Case(
            "invert initializer with invalid UTF-8",
            stage_cmd("invert", "--initializer", BAD_UTF8, "--force"),
            (2,),
            ("initializer",),
        )
    )
    add(
        Case(
            "invert placeholder with a NUL",
            stage_cmd("invert", "--placeholder", "<a\x00>", "--force"),
            (2,),
            ("placeholder",),
        )
    )
    add(
        Case(
            "evaluate prompt with invalid UTF-8",
            stage_cmd("evaluate", "--prompt", BAD_UTF8),
            (2,),
            ("UTF-8",),
        )
    )
    add(Case("-p empty on run-all", ["run-all", "toy.png", PROMPT, "-p", "", *TINY], (2,), ("empty",)))
    add(Case("-p empty on render", ["render", "-p", ""], (2,), ("empty",)))
    add(Case("-p empty on static", ["static", "-p", "", *TINY], (2,), ("empty",)))
    add(Case("-p a file", ["render", "-p", "toy.png"], (1, 2), ("toy.png",)))
    add(Case("-p missing dir on render", ["render", "-p", "nowhere"], (1, 2), ("not an animate124 project",)))
    add(
        Case(
            "-p missing dir on static",
            ["static", "-p", "nowhere", *TINY],
            (1, 2),
            ("not an animate124 project",),
        )
    )
    add(Case("--device bogus", stage_cmd("static", "--device", "gpu0"), (2,), ("device",)))
    add(Case("--device cuda:7", stage_cmd("render", "--device", "cuda:7"), (2,), ("cuda",)))
    add(Case("--preset nope", stage_cmd("static", "--preset", "nope"), (2,), ("nope",)))
    add(
        Case(
            "run-all missing image",
            ["run-all", "nope.png", PROMPT, *TINY, "-p", "fresh"],
            (2,),
            ("not found",),
        )
    )
    add(
        Case(
            "run-all image is a directory",
            ["run-all", "runs", PROMPT, *TINY, "-p", "fresh"],
            (2,),
            ("directory",),
        )
    )
    add(Case("run-all image is text", ["run-all", "notes.txt", PROMPT, *TINY, "-p", "fresh"], (2,), ("not an image",),
             setup=write("notes.txt", b"hello", base="work")))  # fmt: skip
    add(Case("run-all image truncated", ["run-all", "half.png", PROMPT, *TINY, "-p", "fresh"], (2,), ("half.png",),
             setup=lambda c: (c.work / "half.png").write_bytes((c.work / "toy.png").read_bytes()[:300])))  # fmt: skip
    add(
        Case(
            "run-all --from after --until",
            ["run-all", "toy.png", PROMPT, *TINY, "--from", "refine", "--until", "static"],
            (2,),
            ("--from",),
        )
    )
    add(Case("run-all --from nope", ["run-all", "toy.png", PROMPT, *TINY, "--from", "nope"], (2,), ()))
    snap, same = unchanged("p2")
    add(Case("run-all --from static without invert", ["run-all", "toy.png", PROMPT, *TINY, "--from", "static", "-p", "p2"],
             (1,), ("invert", "animate124 invert"), setup=both(without_invert, snap), check=same))  # fmt: skip
    add(Case("render --time 2", stage_cmd("render", "--time", "2"), (2,), ("--time",)))
    add(Case("render --views -1", stage_cmd("render", "--views", "-1"), (2,), ("--views",)))
    add(Case("render --size 0", stage_cmd("render", "--size", "0"), (2,), ("render.size",)))
    add(Case("render --fps 0", stage_cmd("render", "--fps", "0"), (2,), ("fps",)))
    add(Case("render --frames 0", stage_cmd("render", "--frames", "0"), (2,), ("frames",)))
    add(Case("render --background nonsense", stage_cmd("render", "--background", "plaid"), (2,), ("plaid",)))
    add(Case("render --elevation 120", stage_cmd("render", "--elevation", "120"), (2,), ("--elevation",)))
    add(Case("render --stage nope", stage_cmd("render", "--stage", "nope"), (2,), ()))
    add(Case("render --radius 0", stage_cmd("render", "--radius", "0"), (2,), ("radius",)))
    add(Case("export --resolution 0", stage_cmd("export", "--resolution", "0"), (2,), ("resolution",)))
    add(Case("export --format xyz", stage_cmd("export", "--format", "xyz"), (2,), ("xyz",)))
    add(Case("export --decimate 2", stage_cmd("export", "--decimate", "2"), (2,), ("decimate",)))
    add(Case("export --threshold -1", stage_cmd("export", "--threshold", "-1"), (2,), ("threshold",)))
    add(Case("export --frames 0", stage_cmd("export", "--frames", "0"), (2,), ("frames",)))
    add(Case("evaluate --views 0", stage_cmd("evaluate", "--views", "0"), (2,), ("views",)))
    add(Case("evaluate --frames 1", stage_cmd("evaluate", "--frames", "1"), (2,), ("frames",)))
    snap, same = unchanged()  # refused before anything is rendered
    add(
        Case(
            "evaluate --clip-model missing",
            stage_cmd("evaluate", "--clip-model", "/nowhere/clip"),
            (1,),
            ("clip", "/nowhere/clip"),
            setup=snap,
            check=same,
        )
    )
    add(
        Case(
            "evaluate --preset keeps the prompts",
            stage_cmd("evaluate", "--preset", "tiny"),
            (0,),
            ("prompt: a toy is spinning",),
        )
    )
    add(Case("models verify nope", ["models", "verify", "nope"], (2,), ("nope",)))
    add(Case("models path nope", ["models", "path", "nope"], (2,), ("nope",)))
    add(Case("models download nope", ["models", "download", "nope", "--offline"], (2,), ("nope",)))
    add(Case("models download offline", ["models", "download", "sd", "--offline"], (1,), ("offline",)))
    add(Case("models verify tiny", ["models", "verify", "--tiny"], (0,), ("sd",)))
    add(Case("models path not cached", ["models", "path", "sd"], (1,), ("animate124 models download sd",)))
    add(
        Case(
            "models verify --alternative nope",
            ["models", "verify", "video", "--alternative", "nope"],
            (1, 2),
            ("nope",),
        )
    )
    add(Case("report on a non-project", ["report", "-p", "runs"], (1,), ("not an animate124 project",)))
    add(Case("doctor", ["doctor"], (0,), ()))


def _damaged_artifacts(add: Callable[[Case], None]) -> None:
    """Damaged artifacts of every stage: the stage is redone, the next one refuses before changing anything."""
    # stage stays up to date), its own command too; the next stage's command refuses before changing anything.
    # The four files of preprocess share its redo: one heavy case each.
    heavy = {
        "preprocess/rgba.png": (("run-all", "truncated"),),
        "preprocess/depth.png": (("own", "random"),),
        "preprocess/depth.npy": (("run-all", "flipped"),),
        "preprocess/preview.png": (("own", "flipped"),),
    }
    for rel, stage in ARTIFACTS.items():
        until = UNTIL[stage]
        for how_run, how in heavy.get(
            rel, (("run-all", "truncated"), ("own", "flipped"))
        ):  # by size, by hash
            if how_run == "run-all":
                add(Case(f"run-all --until {until} after {rel} {how}", stage_cmd("run-all", "--until", until), (0,),
                         (rel, "will be redone"), setup=DAMAGES[how](rel), damaged=stage, verify_after=True,
                         check=next_up_to_date(until) if until != stage else None))  # fmt: skip
            else:
                add(Case(f"{stage} after {rel} {how}", STAGE_CMDS[stage], (0,), (rel, "will be redone"),
                         setup=DAMAGES[how](rel), damaged=stage, verify_after=True))  # fmt: skip
        nxt = DOWNSTREAM[stage]
        add(Case(f"{nxt} --force after {rel} deleted", stage_cmd(nxt, "--force"), (1,), (rel, "does not exist", "nothing was changed"),
                 setup=delete(rel), damaged=stage, check=not_marked(nxt)))  # fmt: skip
        add(Case(f"render --force after {rel} random", stage_cmd("render", "--force"), (0, 1), (), setup=randomize(rel),
                 damaged=stage if stage == "refine" else None))  # fmt: skip
    add(Case("run-all --until static after static/model.safetensors replaced by a folder", stage_cmd("run-all", "--until", "static"),
             (1,), ("static/model.safetensors",), setup=to_directory("static/model.safetensors"), damaged="static"))  # fmt: skip
    for rel in ("dynamic/model.safetensors", "preprocess/rgba.png"):  # the two, through every stage
        add(Case(f"run-all after {rel} {'truncated' if 'model' in rel else 'deleted'}", STAGE_CMDS["run-all"], (0,),
                 (rel, "will be redone"), setup=(truncate if "model" in rel else delete)(rel), damaged=ARTIFACTS[rel],
                 verify_after=True))  # fmt: skip
    for stage in ("static", "dynamic", "refine"):
        rel = f"{stage}/model.safetensors"
        for cmd in ("render", "export", "evaluate"):
            add(Case(f"{cmd} --stage {stage} after its model truncated", stage_cmd(cmd, "--stage", stage, "--force") if cmd == "render"
                     else stage_cmd(cmd, "--stage", stage), (1,), (rel, f"animate124 {stage}"), setup=truncate(rel), damaged=stage))  # fmt: skip
    add(Case("render after orbit.mp4 truncated", stage_cmd("render"), (0,), ("orbit.mp4",), setup=truncate("renders/refine/orbit.mp4"),
             check=lambda c, out: None if "render: up to date" not in out else "render up to date over a damaged video"))  # fmt: skip
    add(
        Case(
            "render after orbit.mp4 deleted",
            stage_cmd("render"),
            (0,),
            ("orbit.mp4",),
            setup=delete("renders/refine/orbit.mp4"),
        )
    )
    add(Case("run-all after report.html truncated", STAGE_CMDS["run-all"], (0,), ("report.html",), setup=truncate("report.html"),
             damaged="report", verify_after=True))  # fmt: skip
    add(Case("report after report.html flipped", STAGE_CMDS["report"], (0,), (), setup=flip_byte("report.html"),
             damaged="report", verify_after=True))  # fmt: skip
    add(Case("run-all on a finished project writes nothing", STAGE_CMDS["run-all"], (0,), ("up to date",),
             check=lambda c, out: None if "done in" not in out else "work was done"))  # fmt: skip


def _project_files(add: Callable[[Case], None]) -> None:
    """The manifest, saved configs, logs, metrics and the lock, damaged."""
    manifests = {
        "truncated": truncate("manifest.json"),
        "not UTF-8": write("manifest.json", b'{"manifest_version": 1, "stages": {"\xff": 1}}'),
        "random": randomize("manifest.json"),
        "a list": write("manifest.json", b"[1, 2]"),
        "stages a list": write("manifest.json", b'{"manifest_version": 1, "stages": []}'),
        "version 99": write("manifest.json", b'{"manifest_version": 99, "stages": {}}'),
        "empty": write("manifest.json", b""),
    }
    for what, setup in manifests.items():
        for cmd in ("run-all", "render", "static", "report"):
            add(Case(f"{cmd} with the manifest {what}", STAGE_CMDS[cmd], (1,), ("manifest",), setup=setup))
    for what, damage in (("truncated", truncate), ("random", randomize)):
        add(Case(f"render with config/refine.yaml {what}", stage_cmd("render", "--force"), (0, 1), ("refine.yaml",) if what == "random" else (),
                 setup=damage("config/refine.yaml")))  # fmt: skip
        add(
            Case(
                f"report with logs/dynamic.jsonl {what}",
                stage_cmd("report", "--force"),
                (0,),
                (),
                setup=damage("logs/dynamic.jsonl"),
            )
        )
        add(Case(f"report with metrics.json {what}", stage_cmd("report", "--force"), (0,), (),
                 setup=both(write("metrics.json", b'{"clip_i": 0.5}'), damage("metrics.json"))))  # fmt: skip
    add(
        Case(
            "report --force with a garbage lock",
            stage_cmd("report", "--force"),
            (0,),
            (),
            setup=write(".lock", os.urandom(40)),
        )
    )
    add(Case("static with a live lock", stage_cmd("static", "--force"), (1,), ("in use",),
             setup=write(".lock", json.dumps({"pid": 1, "host": os.uname().nodename, "started": "x"}).encode())))  # fmt: skip


def _damaged_checkpoints(add: Callable[[Case], None]) -> None:
    """Interrupted stages with damaged checkpoints: set aside, the stage goes on or starts over, the result verifies."""
    for stage, how, suffix in (
        ("static", "truncated", "safetensors"),
        ("static", "random", "json"),
        ("static", "random", "safetensors"),
        ("dynamic", "truncated", "safetensors"),
    ):
        result = "invert/learned_embeds.safetensors" if stage == "invert" else f"{stage}/model.safetensors"
        kill = (
            interrupted(stage)
            if stage != "invert"
            else both(delete(result), edit_manifest(lambda m: m["stages"]["invert"].update(status="running")))
        )
        damage = truncate if how == "truncated" else randomize
        add(Case(f"{stage} resumed from a {how} {suffix} checkpoint", STAGE_CMDS[stage], (0,), ("set aside", ".corrupt"),
                 setup=both(kill, on_ckpt(stage, suffix, damage)), verify_after=True, check=corrupt_kept(stage)))  # fmt: skip


def _model_cache(add: Callable[[Case], None]) -> None:
    """The tiny model cache, damaged: an error naming the model and how to rebuild it."""
    for pattern, role, cmd in (
        (
            "hub/models--stable-diffusion-v1-5*/snapshots/*/unet/diffusion_pytorch_model*.safetensors",
            "sd",
            "invert",
        ),
        ("hub/models--ashawkey*/snapshots/*/unet/diffusion_pytorch_model*.safetensors", "zero123", "static"),
        ("hub/models--ali-vilab*/snapshots/*/unet/diffusion_pytorch_model*.safetensors", "video", "dynamic"),
        ("hub/models--lllyasviel*/snapshots/*/diffusion_pytorch_model*", "controlnet", "refine"),
        ("hub/models--openai--clip*/snapshots/*/model*.safetensors", "clip", "evaluate"),
        ("hub/models--stable-diffusion-v1-5*/snapshots/*/text_encoder/config.json", "sd", "invert"),
    ):
        for damage in ("truncate", "random"):
            force = () if cmd == "evaluate" else ("--force",)
            what = "config" if pattern.endswith(".json") else "model"
            add(Case(f"{cmd} with the tiny {role} {what} {'truncated' if damage == 'truncate' else 'random'}",
                     stage_cmd(cmd, *force), (1,),
                     ("of role", "tiny test models"), setup=cache_file(pattern, damage), own_cache=True,
                     check=lambda c, out, role=role: f"hints `models verify {role}`" if f"models verify {role}" in out else None))  # fmt: skip


def _export_options(add: Callable[[Case], None]) -> None:
    """`export`'s own options (--animated/--flipbook, --texture, --max-faces, the export.* fields): bad values
    are refused naming the option, a damaged or missing trained field by name, and a good export verifies."""
    for args, needle in (
        (("--texture", "plaid"), "plaid"),
        (("--max-faces", "-1"), "export.max_faces"),
        (("--fps", "0"), "export.fps"),
        (("--flipbook", "--frames", "0"), "export.frames"),
        (("--animated", "--texture", "vertex", "--resolution", "5000"), "export.resolution"),
        (("--set", "export.texture_size=32"), "export.texture_size"),
        (("--set", "export.reference_time=1.5"), "export.reference_time"),
        (("--set", "export.fit_tolerance=-1"), "export.fit_tolerance"),
        (("--set", "export.fit_iters=1e9"), "export.fit_iters"),
        (("--set", "export.max_faces=99999999999"), "export.max_faces"),
        (("--set", "export.interpolation=cubic"), "cubic"),
        (("--set", "export.quantize=sometimes"), "export.quantize"),
        (("--set", "export.turntable=5000"), "export.turntable"),
    ):
        snap, same = unchanged()
        add(
            Case(
                f"export {' '.join(args)}",
                stage_cmd("export", *args),
                (2,),
                (needle,),
                setup=snap,
                check=same,
            )
        )
    for stage, how, args in (
        ("dynamic", "flipped", ("--animated",)),
        ("refine", "truncated", ("--flipbook",)),
        ("refine", "deleted", ("--texture", "vertex")),
        ("static", "random", ("--animated", "--texture", "atlas")),
    ):
        rel = f"{stage}/model.safetensors"
        snap, same = unchanged("runs/toy/export")
        add(Case(f"export {' '.join(args)} --stage {stage} after its model {how}", stage_cmd("export", "--stage", stage, *args),
                 (1,), (rel, f"animate124 {stage}"), setup=both(DAMAGES[how](rel), snap), damaged=stage, check=same))  # fmt: skip
    add(Case("export --flipbook --texture vertex", stage_cmd("export", "--flipbook", "--texture", "vertex"), (0,),
             ("flipbook",), verify_after=True, check=status_is("export", "done")))  # fmt: skip


def _machine(add: Callable[[Case], None]) -> None:
    """What the machine does to a running command: a full disk (numpy's own wording, a checkpoint that does
    not fit) and Ctrl-C in a --force run."""
    add(Case("preprocess on a full disk", stage_cmd("preprocess", "--force"), (1,),
             ("the disk is full: cannot write", "depth.npy"), patch=full_disk_under("preprocess", numpy_wording=True),
             check=all_of(status_is("preprocess", "failed"), lambda c, out: "numpy's wording shown" if "requested and" in out else None)))  # fmt: skip
    add(Case("static checkpoint on a full disk", stage_cmd("static", "--force"), (1,),
             ("the disk is full: cannot write", "ckpt-"), patch=full_disk_under("static/checkpoints"),
             check=status_is("static", "failed")))  # fmt: skip
    add(Case("static --force interrupted by Ctrl-C", stage_cmd("static", "--force"), (130,),
             ("interrupted", "without --force to resume"), patch=ctrl_c_in_stage,
             check=status_is("static", "interrupted")))  # fmt: skip
