"""The bad-input battery: the ways a careful user can give animate124 something wrong, damage its project
or its model cache, and what each one must get back.

Every case runs one command in-process (Typer's CliRunner) on its own copy of one finished tiny project
(``run-all examples/toy.png "a toy is spinning" --preset tiny``, made once), after the case's ``setup``
changed something (a bad option, a truncated model, random bytes in a checkpoint, a deleted image...).
Each case must give:

* no traceback and no "internal error" (the command raised nothing but its own errors);
* an exit code from the case's list (2: usage or config, nothing changed; 1: runtime; 0: it worked);
* the case's expected words in the output (the one-line message that names the field or the file);
* never "up to date" over a damaged project: a case that damages a stage's file must not see that stage
  reported up to date, and when ``run-all`` (or the stage's own command) succeeds afterwards, every
  finished stage of the project must verify (files present with their recorded size and sha256).

Run it alone (``python tests/battery.py``; ``-k WORD`` runs the cases whose name contains WORD, ``-v``
prints every output) or through ``tests/test_battery.py`` (CI). Cases marked ``preflight`` test checks
another part of the CLI (the pre-flight before any stage) is meant to make; they are reported apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a toy is spinning"
TINY = ("--preset", "tiny")
BAD_UTF8 = b"a toy \xff\xfe is spinning".decode("utf-8", "surrogateescape")  # what Linux argv gives Python


@dataclass
class Ctx:
    """Where a case runs: ``work`` (the working directory, holding ``toy.png`` and ``runs/toy``)."""

    work: Path
    cache: Path

    @property
    def project(self) -> Path:
        return self.work / "runs" / "toy"

    def p(self, rel: str) -> Path:
        return self.project / rel


@dataclass
class Case:
    name: str
    args: list[str] | Callable[[Ctx], list[str]]
    codes: tuple[int, ...]
    expect: tuple[str, ...] = ()
    setup: Callable[[Ctx], None] | None = None
    damaged: str | None = None  # the stage whose file the setup damaged
    verify_after: bool = False  # exit 0 must leave every finished stage verified
    own_cache: bool = False  # the case damages the model cache: it gets its own copy
    preflight: bool = False  # checks the pre-flight (another part of the CLI) owns
    check: Callable[[Ctx, str], str | None] | None = None  # extra check: an error text or None


@dataclass
class Outcome:
    case: Case
    code: int
    output: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


# --- damage -----------------------------------------------------------------------------------------
def truncate(rel: str, keep: float = 0.5) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        p = c.p(rel)
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep)])

    return f


def randomize(rel: str) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        p = c.p(rel)
        p.write_bytes(os.urandom(max(p.stat().st_size, 64)))

    return f


def flip_byte(rel: str) -> Callable[[Ctx], None]:
    """Same size, one byte near the end changed (only a content hash sees it)."""

    def f(c: Ctx) -> None:
        p = c.p(rel)
        data = bytearray(p.read_bytes())
        data[-5] ^= 0xFF
        p.write_bytes(bytes(data))

    return f


def delete(rel: str) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        c.p(rel).unlink()

    return f


def to_directory(rel: str) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        c.p(rel).unlink()
        c.p(rel).mkdir()

    return f


def write(rel: str, data: bytes, base: str = "project") -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        root = c.project if base == "project" else c.work
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    return f


def edit_manifest(fn: Callable[[dict], object]) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        m = json.loads(c.p("manifest.json").read_text())
        fn(m)
        c.p("manifest.json").write_text(json.dumps(m))

    return f


def both(*fns: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        for fn in fns:
            fn(c)

    return f


def interrupted(stage: str) -> Callable[[Ctx], None]:
    """The stage as a killed run leaves it: status "running", its result gone, a checkpoint kept."""

    def f(c: Ctx) -> None:
        c.p(f"{stage}/model.safetensors").unlink()
        m = json.loads(c.p("manifest.json").read_text())
        m["stages"][stage]["status"] = "running"
        c.p("manifest.json").write_text(json.dumps(m))

    return f


def ckpt(stage: str, suffix: str) -> Callable[[Ctx], str]:
    def f(c: Ctx) -> str:
        found = sorted(c.p(f"{stage}/checkpoints").glob(f"ckpt-*.{suffix}"))
        return str(found[-1].relative_to(c.project))

    return f


def on_ckpt(stage: str, suffix: str, damage: Callable[[str], Callable[[Ctx], None]]) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        damage(ckpt(stage, suffix)(c))(c)

    return f


def cache_file(pattern: str, damage: str) -> Callable[[Ctx], None]:
    """Damage the first file matching ``pattern`` under the case's own tiny model cache (following the
    snapshot's link to its blob where there is one)."""

    def f(c: Ctx) -> None:
        hits = sorted(c.cache.glob(pattern))
        target = Path(os.path.realpath(hits[0]))
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2] if damage == "truncate" else os.urandom(len(data)))

    return f


# --- checks ------------------------------------------------------------------------------------------
def verifies(c: Ctx) -> list[str]:
    """Problems of every finished stage of the project (empty: it verifies)."""
    from animate124.project import Project

    p = Project(c.project)
    if not p.exists():
        return []
    out = []
    for stage, rec in p.read_manifest()["stages"].items():
        if rec.get("status") == "done":
            out += [f"{stage}: {rel} {what}" for rel, what in p.stage_problems(stage, rec)]
    return out


def unchanged_files(c: Ctx, before: dict[str, bytes]) -> str | None:
    now = {str(q.relative_to(c.project)): q.read_bytes() for q in c.project.rglob("*") if q.is_file()}
    return None if now == before else "the project changed"


# --- the cases ----------------------------------------------------------------------------------------
STAGE_CMDS = {
    "preprocess": lambda c: ["preprocess", "toy.png", "-p", str(c.project), *TINY],
    "invert": lambda c: ["invert", "-p", str(c.project), *TINY],
    "static": lambda c: ["static", "-p", str(c.project), *TINY],
    "dynamic": lambda c: ["dynamic", "-p", str(c.project), *TINY],
    "refine": lambda c: ["refine", "-p", str(c.project), *TINY],
    "run-all": lambda c: ["run-all", "toy.png", PROMPT, *TINY],
    "render": lambda c: ["render", "-p", str(c.project), "--orbit"],
    "export": lambda c: ["export", "-p", str(c.project)],
    "evaluate": lambda c: ["evaluate", "-p", str(c.project)],
    "report": lambda c: ["report", "-p", str(c.project)],
}


def _cmd(name: str, *extra: str) -> Callable[[Ctx], list[str]]:
    return lambda c: [*STAGE_CMDS[name](c), *extra]


ARTIFACTS = {  # file -> the stage that makes it
    "preprocess/rgba.png": "preprocess",
    "preprocess/depth.png": "preprocess",
    "preprocess/depth.npy": "preprocess",
    "preprocess/preview.png": "preprocess",
    "invert/learned_embeds.safetensors": "invert",
    "static/model.safetensors": "static",
    "dynamic/model.safetensors": "dynamic",
    "refine/model.safetensors": "refine",
}
DAMAGES = {"deleted": delete, "truncated": truncate, "random": randomize, "flipped": flip_byte}
UNTIL = {
    "preprocess": "static",
    "invert": "invert",
    "static": "dynamic",
    "dynamic": "refine",
    "refine": "refine",
}
DOWNSTREAM = {
    "preprocess": "static",
    "invert": "refine",
    "static": "dynamic",
    "dynamic": "refine",
    "refine": "render",
}


def cases() -> list[Case]:
    out: list[Case] = []
    add = out.append

    # 1. config values: bounds and types, on every command that reads a config -------------------------
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
            add(Case(f"set {item} on {cmd}", _cmd(cmd, "--set", item, *force), (2,), (needle,), setup=snap,
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

    # 2. -c files ---------------------------------------------------------------------------------------
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
                    _cmd(cmd, "-c", "cfg.yaml"),
                    codes,
                    () if codes == (0, 2) else (needle,),
                    setup=setup,
                )
            )

    # 3. text inputs and options --------------------------------------------------------------------------
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
             (2,), ("tokens",), preflight=True))  # fmt: skip
    add(
        Case(
            "static prompt with invalid UTF-8", _cmd("static", "--prompt", BAD_UTF8), (2,), ("static.prompt",)
        )
    )
    add(Case("dynamic empty prompt", _cmd("dynamic", "--prompt", " "), (2,), ("empty",)))
    add(
        Case(
            "refine prompt with a tab and NUL",
            _cmd("refine", "--prompt", "a <token>\t\x00"),
            (2,),
            ("control",),
        )
    )
    add(
        Case(
            "invert initializer with invalid UTF-8",
            _cmd("invert", "--initializer", BAD_UTF8, "--force"),
            (2,),
            ("initializer",),
        )
    )
    add(
        Case(
            "invert placeholder with a NUL",
            _cmd("invert", "--placeholder", "<a\x00>", "--force"),
            (2,),
            ("placeholder",),
        )
    )
    add(Case("evaluate prompt with invalid UTF-8", _cmd("evaluate", "--prompt", BAD_UTF8), (2,), ("UTF-8",)))
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
    add(Case("--device bogus", _cmd("static", "--device", "gpu0"), (2,), ("device",)))
    add(Case("--device cuda:7", _cmd("render", "--device", "cuda:7"), (2,), ("cuda",)))
    add(Case("--preset nope", _cmd("static", "--preset", "nope"), (2,), ("nope",)))
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
    add(Case("run-all --from static without invert", ["run-all", "toy.png", PROMPT, *TINY, "--from", "static", "-p", "p2"],
             (1, 2), ("invert",), preflight=True, setup=_without_invert))  # fmt: skip
    add(Case("render --time 2", _cmd("render", "--time", "2"), (2,), ("--time",)))
    add(Case("render --views -1", _cmd("render", "--views", "-1"), (2,), ("--views",)))
    add(Case("render --size 0", _cmd("render", "--size", "0"), (2,), ("render.size",)))
    add(Case("render --fps 0", _cmd("render", "--fps", "0"), (2,), ("fps",)))
    add(Case("render --frames 0", _cmd("render", "--frames", "0"), (2,), ("frames",)))
    add(Case("render --background nonsense", _cmd("render", "--background", "plaid"), (2,), ("plaid",)))
    add(Case("render --elevation 120", _cmd("render", "--elevation", "120"), (2,), ("--elevation",)))
    add(Case("render --stage nope", _cmd("render", "--stage", "nope"), (2,), ()))
    add(Case("render --radius 0", _cmd("render", "--radius", "0"), (2,), ("radius",)))
    add(Case("export --resolution 0", _cmd("export", "--resolution", "0"), (2,), ("resolution",)))
    add(Case("export --format xyz", _cmd("export", "--format", "xyz"), (2,), ("xyz",)))
    add(Case("export --decimate 2", _cmd("export", "--decimate", "2"), (2,), ("decimate",)))
    add(Case("export --threshold -1", _cmd("export", "--threshold", "-1"), (2,), ("threshold",)))
    add(Case("export --frames 0", _cmd("export", "--frames", "0"), (2,), ("frames",)))
    add(Case("evaluate --views 0", _cmd("evaluate", "--views", "0"), (2,), ("views",)))
    add(Case("evaluate --frames 1", _cmd("evaluate", "--frames", "1"), (2,), ("frames",)))
    add(
        Case(
            "evaluate --clip-model missing",
            _cmd("evaluate", "--clip-model", "/nowhere/clip"),
            (1, 2),
            ("clip",),
            preflight=True,
        )
    )
    add(
        Case(
            "evaluate --preset keeps the prompts",
            _cmd("evaluate", "--preset", "tiny"),
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

    # 4. damaged artifacts: run-all redoes the stage (from its last checkpoint: the same bytes, so the next
    # stage stays up to date), its own command too; the next stage's command refuses before changing anything
    for rel, stage in ARTIFACTS.items():
        until = UNTIL[stage]
        for how in ("truncated", "flipped"):  # found by the size, by the content hash
            add(Case(f"run-all --until {until} after {rel} {how}", _cmd("run-all", "--until", until), (0,), (rel, "will be redone"),
                     setup=DAMAGES[how](rel), damaged=stage, verify_after=True,
                     check=_next_up_to_date(until) if until != stage else None))  # fmt: skip
        add(Case(f"{stage} after {rel} random", STAGE_CMDS[stage], (0,), (rel, "will be redone"), setup=randomize(rel),
                 damaged=stage, verify_after=True))  # fmt: skip
        nxt = DOWNSTREAM[stage]
        add(Case(f"{nxt} --force after {rel} deleted", _cmd(nxt, "--force"), (1,), (rel, "does not exist", "nothing was changed"),
                 setup=delete(rel), damaged=stage, check=_not_marked(nxt)))  # fmt: skip
        add(Case(f"run-all --until {stage} after {rel} replaced by a folder", _cmd("run-all", "--until", stage), (0, 1), (rel,),
                 setup=to_directory(rel), damaged=stage))  # fmt: skip
    for rel in ("dynamic/model.safetensors", "preprocess/rgba.png"):  # the two, through every stage
        add(Case(f"run-all after {rel} {'truncated' if 'model' in rel else 'deleted'}", STAGE_CMDS["run-all"], (0,),
                 (rel, "will be redone"), setup=(truncate if "model" in rel else delete)(rel), damaged=ARTIFACTS[rel],
                 verify_after=True))  # fmt: skip
    for stage in ("static", "dynamic", "refine"):
        rel = f"{stage}/model.safetensors"
        for cmd in ("render", "export", "evaluate"):
            add(Case(f"{cmd} --stage {stage} after its model truncated", _cmd(cmd, "--stage", stage, "--force") if cmd == "render"
                     else _cmd(cmd, "--stage", stage), (1,), (rel, f"animate124 {stage}"), setup=truncate(rel), damaged=stage))  # fmt: skip
    add(Case("render after orbit.mp4 truncated", _cmd("render"), (0,), ("orbit.mp4",), setup=truncate("renders/refine/orbit.mp4"),
             check=lambda c, out: None if "render: up to date" not in out else "render up to date over a damaged video"))  # fmt: skip
    add(
        Case(
            "render after orbit.mp4 deleted",
            _cmd("render"),
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

    # 5. the manifest, saved configs, logs, the lock ------------------------------------------------------
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
        add(Case(f"render with config/refine.yaml {what}", _cmd("render", "--force"), (0, 1), ("refine.yaml",) if what == "random" else (),
                 setup=damage("config/refine.yaml")))  # fmt: skip
        add(
            Case(
                f"report with logs/dynamic.jsonl {what}",
                _cmd("report", "--force"),
                (0,),
                (),
                setup=damage("logs/dynamic.jsonl"),
            )
        )
        add(Case(f"report with metrics.json {what}", _cmd("report", "--force"), (0,), (),
                 setup=both(write("metrics.json", b'{"clip_i": 0.5}'), damage("metrics.json"))))  # fmt: skip
    add(
        Case(
            "static with a garbage lock",
            _cmd("static", "--force"),
            (0,),
            (),
            setup=write(".lock", os.urandom(40)),
        )
    )
    add(Case("static with a live lock", _cmd("static", "--force"), (1,), ("in use",),
             setup=write(".lock", json.dumps({"pid": 1, "host": os.uname().nodename, "started": "x"}).encode())))  # fmt: skip

    # 6. interrupted stages with damaged checkpoints: set aside, the stage starts over, the result verifies
    for stage, how, suffix in (
        ("static", "truncated", "safetensors"),
        ("static", "random", "json"),
        ("static", "random", "safetensors"),
        ("dynamic", "truncated", "safetensors"),
        ("invert", "random", "safetensors"),
    ):
        result = "invert/learned_embeds.safetensors" if stage == "invert" else f"{stage}/model.safetensors"
        kill = (
            interrupted(stage)
            if stage != "invert"
            else both(delete(result), edit_manifest(lambda m: m["stages"]["invert"].update(status="running")))
        )
        damage = truncate if how == "truncated" else randomize
        add(Case(f"{stage} resumed from a {how} {suffix} checkpoint", STAGE_CMDS[stage], (0,), ("set aside", ".corrupt"),
                 setup=both(kill, on_ckpt(stage, suffix, damage)), verify_after=True, check=_corrupt_kept(stage)))  # fmt: skip

    # 7. the model cache --------------------------------------------------------------------------------
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
            add(Case(f"{cmd} with the tiny {role} model {damage}d", _cmd(cmd, "--force"), (1,),
                     ("of role", "tiny test models"), setup=cache_file(pattern, damage), own_cache=True))  # fmt: skip
    return out


def _without_invert(c: Ctx) -> None:
    """A copy of the project (``p2``) in which invert never ran."""
    p2 = c.work / "p2"
    shutil.copytree(c.project, p2)
    shutil.rmtree(p2 / "invert")
    m = json.loads((p2 / "manifest.json").read_text())
    m["stages"].pop("invert", None)
    (p2 / "manifest.json").write_text(json.dumps(m))


def _not_marked(stage: str) -> Callable[[Ctx, str], str | None]:
    """A refused stage was not changed: its record still says done and its checkpoints are there."""

    def f(c: Ctx, out: str) -> str | None:
        if stage == "render":
            return None
        rec = json.loads(c.p("manifest.json").read_text())["stages"][stage]
        if rec.get("status") != "done":
            return f"{stage} was marked {rec.get('status')}"
        if not list(c.p(f"{stage}/checkpoints").glob("ckpt-*")):
            return f"{stage}'s checkpoints were deleted"
        return None

    return f


def _next_up_to_date(stage: str) -> Callable[[Ctx, str], str | None]:
    """The stage after the redone one read the same bytes: it is up to date (not trained again)."""

    def f(c: Ctx, out: str) -> str | None:
        return None if f"{stage}: up to date" in out else f"{stage} was not up to date after the redo"

    return f


def _corrupt_kept(stage: str) -> Callable[[Ctx, str], str | None]:
    def f(c: Ctx, out: str) -> str | None:
        # the set-aside files are gone only if the stage started over and cleared its folder
        return None if "starts over" in out or "previous" in out else "no word on how it goes on"

    return f


# --- running --------------------------------------------------------------------------------------------
#: A case that runs longer than this is stopped and fails (a stage that should have been refused ran).
CASE_LIMIT_S = float(os.environ.get("ANIMATE124_BATTERY_CASE_LIMIT_S", "180"))


class CaseTimeout(Exception):
    """Raised in a case that ran past :data:`CASE_LIMIT_S`."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    import signal

    def alarm(signum, frame):  # noqa: ARG001
        raise CaseTimeout(f"ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def make_base(root: Path) -> Ctx:
    """One finished tiny project in ``root/work`` (run-all through the CLI) and its model cache."""
    from typer.testing import CliRunner

    from animate124.cli.app import app

    work = root / "work"
    work.mkdir(parents=True)
    shutil.copy(REPO / "examples" / "toy.png", work / "toy.png")
    cache = Path(os.environ.get("ANIMATE124_CACHE", root / "cache"))
    env = {"COLUMNS": "200", "ANIMATE124_STATE_DIR": str(root / "state"), "ANIMATE124_CACHE": str(cache)}
    with _cwd(work):
        r = CliRunner().invoke(app, ["run-all", "toy.png", PROMPT, *TINY, "-q"], env=env)
    if r.exit_code != 0:
        raise RuntimeError(f"the base run-all failed ({r.exit_code}):\n{r.output}")
    shutil.copytree(work, work.with_name("pristine"), symlinks=True)
    return Ctx(work=work, cache=cache / "tiny-models")


def run_case(case: Case, base: Ctx, scratch: Path) -> Outcome:
    """Run ``case`` in ``base.work`` restored from its pristine copy (the same path for every case: the
    report and the manifest name absolute paths)."""
    from typer.testing import CliRunner

    from animate124.cli.app import app

    work = base.work
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base.work.with_name("pristine"), work, symlinks=True)
    cache_root = base.cache.parent
    if case.own_cache:
        cache_root = scratch / "cache"
        shutil.copytree(base.cache, cache_root / "tiny-models", symlinks=True)
    ctx = Ctx(work=work, cache=cache_root / "tiny-models")
    if case.setup is not None:
        case.setup(ctx)
    args = case.args(ctx) if callable(case.args) else list(case.args)
    env = {
        "COLUMNS": "200",
        "ANIMATE124_STATE_DIR": str(scratch / "state"),
        "ANIMATE124_CACHE": str(cache_root),
    }
    t0 = time.perf_counter()
    with _cwd(work), _time_limit(CASE_LIMIT_S):
        r = CliRunner().invoke(app, args, env=env)
    out = Outcome(case, r.exit_code, r.output, seconds=time.perf_counter() - t0)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        import traceback

        out.problems.append("raised " + "".join(traceback.format_exception(r.exception)).strip())
    text = r.output
    if "Traceback" in text:
        out.problems.append("a traceback in the output")
    if "internal error" in text:
        out.problems.append("an internal error")
    if r.exit_code not in case.codes:
        out.problems.append(f"exit code {r.exit_code}, expected {case.codes}")
    flat = " ".join(text.split())
    for word in case.expect:
        if word not in flat:
            out.problems.append(f"the output does not say {word!r}")
    if case.damaged and f"{case.damaged}: up to date" in flat:
        out.problems.append(f"'{case.damaged}: up to date' over a damaged project")
    if case.verify_after and r.exit_code == 0:
        out.problems += [f"after exit 0: {p}" for p in verifies(ctx)]
    if case.check is not None:
        problem = case.check(ctx, flat)
        if problem:
            out.problems.append(problem)
    return out


def run(selected: list[Case], verbose: bool = False) -> list[Outcome]:
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="animate124-battery-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        base = make_base(root / "base")
        print(f"base project in {time.perf_counter() - t0:.1f} s; {len(selected)} cases", flush=True)
        for i, case in enumerate(selected):
            scratch = root / f"case{i:03d}"
            scratch.mkdir()
            try:
                o = run_case(case, base, scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            outcomes.append(o)
            mark = "ok  " if not o.problems else "FAIL"
            print(f"{mark} {o.seconds:5.1f} s  exit {o.code}  {case.name}", flush=True)
            if o.problems or verbose:
                for p in o.problems:
                    print(f"       - {p}")
                print("       | " + "\n       | ".join(o.output.strip().splitlines()[-8:]))
    return outcomes


def summary(outcomes: list[Outcome]) -> dict[str, object]:
    def count(word: str) -> int:
        return sum(any(word in p for p in o.problems) for o in outcomes)

    return {
        "cases": len(outcomes),
        "commands": sorted(
            {
                (o.case.args(Ctx(Path("w"), Path("c"))) if callable(o.case.args) else o.case.args)[0]
                for o in outcomes
            }
        ),  # fmt: skip
        "failed": [o.case.name for o in outcomes if o.problems],
        "tracebacks": count("traceback") + count("raised"),
        "internal_errors": count("internal error"),
        "up_to_date_over_damage": count("up to date' over")
        + count("after exit 0")
        + count("up to date over"),
        "preflight_cases": [o.case.name for o in outcomes if o.case.preflight],
        "seconds": round(sum(o.seconds for o in outcomes), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="run only the cases whose name contains this")
    ap.add_argument("-v", action="store_true", help="print every output")
    ap.add_argument("--json", type=Path, help="write the summary here")
    a = ap.parse_args()
    selected = [c for c in cases() if a.k in c.name]
    outcomes = run(selected, verbose=a.v)
    s = summary(outcomes)
    print(json.dumps(s, indent=2))
    if a.json:
        a.json.write_text(json.dumps(s, indent=2) + "\n")
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
