"""Progress for long work: a live line on a terminal, plain timestamped lines otherwise (CI logs)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from rich.console import Console

from lab.errors import LabError

console = Console(stderr=True, highlight=False)
LOG = logging.getLogger(__name__)


def info(message: str) -> None:
    LOG.info("%s", message)  # the run's lab.log tells the whole story, progress included
    if console.is_terminal:
        console.print(f"[bold cyan]lab[/]: {message}")
    else:
        print(f"lab: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    LOG.warning("%s", message)
    if console.is_terminal:
        console.print(f"[bold yellow]lab: warning[/]: {message}")
    else:
        print(f"lab: warning: {message}", file=sys.stderr, flush=True)


@contextmanager
def step(title: str) -> Iterator["Step"]:
    """A titled piece of work; shows a spinner with the latest detail on a terminal."""
    started = time.monotonic()
    st = Step(title, started)
    # One live display at a time: work in a helper thread (an image built while kernels download)
    # prints plain lines above the main thread's spinner.
    if console.is_terminal and threading.current_thread() is threading.main_thread():
        with console.status(title) as status:
            st._status = status
            yield st
    else:
        info(f"{title} ...")
        yield st
    info(f"{title}: done in {time.monotonic() - started:.1f} s{st.suffix}")


class Step:
    def __init__(self, title: str, started: float) -> None:
        self.title = title
        self.started = started
        self.suffix = ""
        self._status: Any = None
        self._last_plain = 0.0

    def update(self, detail: str) -> None:
        elapsed = time.monotonic() - self.started
        detail = detail.strip()[:100]
        if self._status is not None:
            self._status.update(f"{self.title} [{elapsed:4.0f} s] {detail}")
        elif time.monotonic() - self._last_plain > 10:
            # In logs, one line every 10 s is enough to show life without flooding.
            self._last_plain = time.monotonic()
            info(f"{self.title} [{elapsed:.0f} s] {detail}")


def run_logged(argv: Sequence[str], log: Path, st: Step | None = None, what: str | None = None, **kwargs) -> None:
    """Run a long host command, its output appended to log and its latest line shown as progress.
    On failure the error carries the tail of the log."""
    tail: deque[str] = deque(maxlen=15)
    errors: list[str] = []  # apt's and mmdebstrap's "E: ..." lines: the first says what went wrong
    with open(log, "a") as out:
        out.write(f"$ {' '.join(map(str, argv))}\n")
        out.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", **kwargs)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                out.write(line)
                tail.append(line.rstrip())
                if line.startswith(("E: ", "error: ", "fatal: ")) and len(errors) < 5:
                    errors.append(line.strip())
                if st:
                    st.update(line)
        finally:
            rc = proc.wait()
    if rc != 0:
        lines = "\n    ".join(tail) or "(no output)"
        cause = f": {errors[0][:200]}" if errors else ""
        raise LabError(f"{what or argv[0]} failed (exit {rc}){cause}; log: {log}; last lines:\n    {lines}")
