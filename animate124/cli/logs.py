"""Where log records and the libraries' warnings go: one handler on the root logger, printing to stderr.

- ``animate124.*`` warnings are shown as ``warning: ...`` lines (also with --quiet: they are warnings);
  its info records only with --verbose, debug with --debug.
- The libraries' records (transformers' "Token indices sequence length ...", diffusers, huggingface_hub,
  torch, Python ``warnings``) come through the same handler, shown only with --verbose (errors always).
  transformers and diffusers print through handlers of their own: when they are imported (or with
  --verbose, which imports them) those are removed and their records propagate here; otherwise their
  verbosity variables are set to "error" before they are imported (a value the user set wins).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

_OWN = "animate124"
_ROUTED = ("transformers", "diffusers")


class _ConsoleHandler(logging.Handler):
    """One line per record on stderr: ``warning: message`` for ours, ``name: message`` for a library's."""

    def __init__(self, verbose: bool) -> None:
        super().__init__(logging.DEBUG)
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == _OWN or record.name.startswith(_OWN + ".")
        if record.levelno >= logging.ERROR:
            return True
        if ours:
            return record.levelno >= logging.WARNING or self.verbose
        return self.verbose

    def emit(self, record: logging.LogRecord) -> None:
        from rich.console import Console
        from rich.markup import escape

        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not end the command
            text = str(record.msg)
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # bytes that were not UTF-8
        ours = record.name == _OWN or record.name.startswith(_OWN + ".")
        level = record.levelname.lower()
        colour = {"warning": "yellow", "error": "red", "critical": "red"}.get(level, "dim")
        who = "" if ours else f"{record.name.split('.')[0] if record.name != 'py.warnings' else 'python'} "
        if record.name == "py.warnings":
            text = text.strip().splitlines()[0] if text.strip() else text
        console = Console(stderr=True, highlight=False, soft_wrap=True)
        console.print(f"[{colour}]{escape(who)}{level}:[/{colour}] {escape(text)}")


def configure_logging(verbose: bool = False, debug: bool = False) -> None:
    """Route every log record and warning through one handler (see the module docstring)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _ConsoleHandler):
            root.removeHandler(h)
    root.addHandler(_ConsoleHandler(verbose or debug))
    root.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    logging.captureWarnings(True)
    for lib in _ROUTED:
        if lib in sys.modules or verbose or debug:
            try:
                mod = importlib.import_module(f"{lib}.utils.logging")
            except ImportError:  # pragma: no cover - a library that is not installed logs nothing
                continue
            mod.disable_default_handler()
            mod.enable_propagation()
            mod.set_verbosity(logging.DEBUG if debug else logging.INFO if verbose else logging.ERROR)
        else:
            os.environ.setdefault(f"{lib.upper()}_VERBOSITY", "error")
