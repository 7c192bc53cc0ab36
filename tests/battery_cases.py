"""The cases of the bad-input battery (``tests/battery.py`` runs them): what each one damages or gets
wrong, the command it runs, the exit codes it may give and the words its output must contain.

A case's ``setup`` changes the copy of the finished tiny project (``Ctx.project``) or the working directory
(``Ctx.work``) before the command runs; ``damaged`` names the stage whose file it damaged, ``verify_after``
asks that an exit 0 leave every finished stage verified, ``check`` adds a case's own check of the project.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
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
                add(Case(f"run-all --until {until} after {rel} {how}", _cmd("run-all", "--until", until), (0,),
                         (rel, "will be redone"), setup=DAMAGES[how](rel), damaged=stage, verify_after=True,
                         check=_next_up_to_date(until) if until != stage else None))  # fmt: skip
            else:
                add(Case(f"{stage} after {rel} {how}", STAGE_CMDS[stage], (0,), (rel, "will be redone"),
                         setup=DAMAGES[how](rel), damaged=stage, verify_after=True))  # fmt: skip
        nxt = DOWNSTREAM[stage]
        add(Case(f"{nxt} --force after {rel} deleted", _cmd(nxt, "--force"), (1,), (rel, "does not exist", "nothing was changed"),
                 setup=delete(rel), damaged=stage, check=_not_marked(nxt)))  # fmt: skip
        add(Case(f"render --force after {rel} random", _cmd("render", "--force"), (0, 1), (), setup=randomize(rel),
                 damaged=stage if stage == "refine" else None))  # fmt: skip
    add(Case("run-all --until static after static/model.safetensors replaced by a folder", _cmd("run-all", "--until", "static"),
             (1,), ("static/model.safetensors",), setup=to_directory("static/model.safetensors"), damaged="static"))  # fmt: skip
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
            "report --force with a garbage lock",
            _cmd("report", "--force"),
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
            force = () if cmd == "evaluate" else ("--force",)
            what = "config" if pattern.endswith(".json") else "model"
            add(Case(f"{cmd} with the tiny {role} {what} {'truncated' if damage == 'truncate' else 'random'}",
                     _cmd(cmd, *force), (1,),
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
