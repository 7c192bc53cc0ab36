"""`opt`: a configuration field with its one-line help text and bounds (read by the loader and `config show`);
and the help texts two sections share."""

from __future__ import annotations

from dataclasses import field as dc_field


def opt(default, help: str, **kw):  # noqa: A002 - "help" reads best here
    """A dataclass field with its one-line help text."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed; use tuples")
    return dc_field(default=default, metadata={"help": help, **kw})


# help texts two sections share (static and dynamic Zero123)
ZERO123_C_CONCAT_HELP = (
    "Zero123's image latent of the reference: mode = the VAE posterior's mean (original Zero123, SPEC 11.14); "
    "sample = one posterior sample drawn with run.seed (upstream Animate124)."
)
ZERO123_CLIP_HELP = (
    "Zero123's CLIP preprocessing of the reference: torch = bicubic antialiased resize and CLIP normalisation "
    "in torch; processor = upstream's: the model's CLIPImageProcessor (PIL) fed (255 * image) truncated to "
    "integers (SPEC 3.8, 11.14)."
)
