"""The lab's log: every module logs to `lab.<module>`; a run directory's `lab.log` gets everything
at debug level (so an `except` that gives up still leaves a line), the terminal only what -v asks."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _Terminal(logging.StreamHandler):
    """The lab's own terminal handler (so setup() can replace it without touching anyone else's)."""


def setup(verbose: bool) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for handler in list(root.handlers):
        if isinstance(handler, _Terminal):
            root.removeHandler(handler)
    terminal = _Terminal(sys.stderr)
    terminal.setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    terminal.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(terminal)
    # Libraries stay quiet in the run log too unless -v: paramiko alone logs every packet.
    for noisy in ("paramiko", "invoke", "fabric", "qemu", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


@contextmanager
def to_file(path: Path) -> Iterator[None]:
    """Everything the lab logs while the block runs also goes to `path`."""
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    if root.level > logging.DEBUG or root.level == logging.NOTSET:
        root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
