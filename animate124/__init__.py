"""animate124: animate one image into a 4D dynamic scene from a text motion prompt.

A reimplementation of Animate124 (Zhao et al., arXiv 2311.14603) with the upstream bugs fixed
(see docs and ../shared/SPEC.md section 11). Heavy libraries (torch, diffusers, transformers) are
imported lazily by the modules that need them, so importing this package is cheap.
"""

__version__ = "0.1.0"
