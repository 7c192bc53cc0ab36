"""Checks of single values that every entry point shares: text is text, numbers are numbers in range.

Text comes from the command line, YAML files and the environment. On Linux a command-line argument
with bytes that are not UTF-8 reaches Python as a string with lone surrogates (``\\udcff`` for the byte
0xff); such a string cannot be written to the project's YAML or JSON, nor tokenized, so it is refused
here, before anything is written, with the position and the byte. Control characters (other than tab
and newline) are refused too: a prompt with a NUL or an escape sequence in it is a pasted binary or a
terminal accident, not a description.
"""

from __future__ import annotations

import math
import unicodedata

from animate124.errors import ConfigError

__all__ = ["check_text", "check_number", "MAX_INT"]

#: The largest integer any field accepts unless it says otherwise (sizes, counts and steps beyond it are
#: typing mistakes, and torch's int32 kernels would overflow on them).
MAX_INT = 2**31 - 1

_ALLOWED_CONTROL = {"\t", "\n", "\r"}


def check_text(name: str, value: str) -> str:
    """Return ``value`` when it is text that can be written and tokenized; else a ConfigError naming
    ``name`` (a config field or an option) and the first offending position."""
    for i, ch in enumerate(value):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: a byte that is not UTF-8
            raise ConfigError(
                f"{name}: not valid UTF-8 text (byte 0x{code - 0xDC00:02x} at position {i})",
                hint="give the text in UTF-8 (check the terminal's or the file's encoding)",
            )
        if 0xD800 <= code <= 0xDFFF:
            raise ConfigError(
                f"{name}: not valid text (a lone surrogate U+{code:04X} at position {i})",
                hint="give the text in UTF-8",
            )
        if unicodedata.category(ch) == "Cc" and ch not in _ALLOWED_CONTROL:
            raise ConfigError(
                f"{name}: contains the control character U+{code:04X} at position {i}",
                hint="give plain text (letters, digits, punctuation, spaces)",
            )
    return value


def check_number(name: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    """ConfigError naming ``name`` when ``value`` is not finite or outside ``[lo, hi]``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}: {value!r} is not a finite number", hint=f"give {name} a real number")
    if lo is not None and value < lo:
        raise ConfigError(f"{name}: {value!r} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name}: {value!r} is above the maximum {hi}")
