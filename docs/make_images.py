"""Make the README's pictures from a real tiny run: ``python docs/make_images.py``.

In a temporary directory it runs, through the installed ``animate124`` command, the README's first
command (``run-all examples/toy.png "a toy is spinning" --preset tiny``), then ``render --views 4 --depth
--normal``, ``export``, ``evaluate`` and ``report``; then it writes

* ``docs/images/report.png``: the top of ``report.html`` in headless Chromium (1280 px viewport, scaled
  to 1000 px wide);
* ``docs/images/orbit-tiny.png``: the frames of ``renders/refine/orbit.mp4`` side by side, enlarged
  with nearest-neighbour sampling (the tiny preset renders 32 px frames).

Needs Chromium (``apt-get install chromium``) and the package installed (``pip install -e .``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"
WIDTH, TOP = 1000, 1750  # the report picture: width, and the height of the page shown (viewport px)


def animate124(cwd: Path, *args: str) -> None:
    script = Path(sys.executable).with_name("animate124")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "animate124.cli.app"]
    env = {**os.environ, "ANIMATE124_STATE_DIR": str(cwd / ".state"), "OMP_NUM_THREADS": "1"}
    print("$ animate124", " ".join(args), flush=True)
    subprocess.run([*cmd, *args, "-q"], cwd=cwd, env=env, check=True)


def report_picture(report: Path, dest: Path) -> None:
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from helpers_outputs import MEDIA_CHECK_JS, HeadlessChromium, find_chromium

    exe = find_chromium()
    if exe is None:
        raise SystemExit("no Chromium: apt-get install -y chromium")
    browser = HeadlessChromium(exe, Path(tempfile.mkdtemp(prefix="a124-chromium-")))
    shot = dest.with_suffix(".full.png")
    try:
        session = browser.open(report.as_uri(), width=1280, height=TOP)
        browser.evaluate(session, MEDIA_CHECK_JS)  # waits for every image and video
        browser.screenshot(session, shot, full_page=False)
    finally:
        browser.close()
    img = Image.open(shot).convert("RGB")
    img = img.resize((WIDTH, round(img.height * WIDTH / img.width)), Image.LANCZOS)
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        dest, optimize=True
    )
    shot.unlink()


def orbit_picture(video: Path, dest: Path, scale: int = 4, gap: int = 4) -> None:
    import imageio.v3 as iio
    from PIL import Image

    frames = iio.imread(video, index=None, plugin="FFMPEG")
    n, h, w, _ = frames.shape
    strip = Image.new("RGB", (n * w * scale + (n - 1) * gap, h * scale), "white")
    for k, f in enumerate(frames):
        tile = Image.fromarray(f).resize((w * scale, h * scale), Image.NEAREST)
        strip.paste(tile, (k * (w * scale + gap), 0))
    strip.save(dest, optimize=True)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="a124-images-"))
    try:
        (work / "examples").mkdir()
        shutil.copy(REPO / "examples" / "toy.png", work / "examples" / "toy.png")
        animate124(work, "run-all", "examples/toy.png", "a toy is spinning", "--preset", "tiny")
        for args in (
            ("render", "--views", "4", "--depth", "--normal"),
            ("export",),
            ("evaluate",),
            ("report",),
        ):
            animate124(work, *args)
        project = work / "runs" / "toy"
        report_picture(project / "report.html", OUT / "report.png")
        orbit_picture(project / "renders" / "refine" / "orbit.mp4", OUT / "orbit-tiny.png")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for p in (OUT / "report.png", OUT / "orbit-tiny.png"):
        print(f"{p.relative_to(REPO)}: {p.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
