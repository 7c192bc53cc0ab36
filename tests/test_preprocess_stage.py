"""The preprocess stage over a project: validation before anything is written, one downscale warning."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from animate124.config import resolve_config
from animate124.preprocess.image_io import load_photo
from animate124.project import Project
from animate124.stages.preprocess import run_preprocess


def test_big_image_warns_once_through_preprocess_and_invert_loading(tmp_path, caplog):
    """A 4000x3000 photo: the downscale warning is printed once, not once per load."""
    h, w = 3000, 4000
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[1000:2000, 1500:2500, 3] = 255
    big = tmp_path / "big.png"
    Image.fromarray(rgba, "RGBA").save(big, compress_level=1)
    proj = Project(tmp_path / "p")
    with caplog.at_level(logging.WARNING, logger="animate124.preprocess.image_io"):
        result = run_preprocess(proj, resolve_config("tiny"), big)
        photo = load_photo(big)  # what the invert stage loads
    warnings = [r for r in caplog.records if "downscaling" in r.message]
    assert len(warnings) == 1, [r.message for r in warnings]
    assert result.metrics["input_size"] == [2048, 1536] and tuple(photo.shape) == (3, 1536, 2048)
    # the project's manifest names the image and its content hash
    assert proj.source()[0] == str(big.resolve()) and len(proj.source()[1]) == 64
