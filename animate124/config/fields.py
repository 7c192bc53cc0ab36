"""`opt`: a configuration field with its one-line help text and bounds (read by the loader and `config show`)."""

from __future__ import annotations

from dataclasses import field as dc_field


def opt(default, help: str, **kw):  # noqa: A002 - "help" reads best here
    """A dataclass field with its one-line help text."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed; use tuples")
    return dc_field(default=default, metadata={"help": help, **kw})
