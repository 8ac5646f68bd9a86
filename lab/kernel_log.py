"""One detector for problems in a kernel log (a guest's console or dmesg), and how a window of it is
judged. Every scenario judges every machine of a sub-run with it, case by case; the boot
classifier and the emulator-fault retry read it too.

Two families of problem:

    crash   the kernel itself went wrong: panic, oops, BUG, WARNING, KASAN/UBSAN/KFENCE, hung task,
            soft/hard lockup, RCU stall
    device  the storage path reported an error: NVMe timeout, abort or reset, an NVMe status
            ("I/O Error (sct ...)"), a PI check failure, a block-layer I/O error, a medium error

A problem fails the case it happened in unless a rule says why it is there: the scenario expects
it (guard errors of a mutating run before 7.0, I/O errors after a hot-unplug), or a known emulation
fact explains it (QEMU's NVMe reads a block's data and its PI in two steps, so a READ guard error
while buffered or mapped access races a direct write is the emulation's, not the kernel's)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

_TIMESTAMP = re.compile(r"^\s*(?:<\d+>)?\[\s*\d+\.\d+\]\s*")

CRASH = ("panic", "oops", "sanitizer", "bug", "warning", "hung_task", "lockup", "rcu_stall")
DEVICE = ("nvme_timeout", "nvme_abort", "nvme_reset", "pi_write", "pi_read", "nvme_status", "medium_error", "io_error")
PI = frozenset({"pi_write", "pi_read"})

# The first pattern that matches a line names its kind: order matters (a KASAN report starts with
# "BUG: KASAN", an NVMe PI status is an NVMe status).
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("panic", re.compile(r"Kernel panic - not syncing")),
    ("sanitizer", re.compile(r"\b(?:KASAN|UBSAN|KFENCE|KMSAN|KCSAN): ")),
    ("oops", re.compile(r"\bOops(?::|\b)|\bgeneral protection fault\b|\bunable to handle (?:kernel|page)")),
    ("lockup", re.compile(r"\bsoft lockup\b|\bhard LOCKUP\b|Watchdog detected hard LOCKUP")),
    ("bug", re.compile(r"\bBUG: |\bkernel BUG at\b")),
    ("warning", re.compile(r"\bWARNING: (?:CPU: \d+ PID: \d+ at |.* at )|\bWARNING: possible (?:recursive|circular)")),
    ("hung_task", re.compile(r"\bblocked for more than \d+ seconds")),
    ("rcu_stall", re.compile(r"\brcu_(?:preempt|sched|bh)?\s*(?:self-)?detected (?:stalls|stall)\b|\brcu: INFO: .*stall")),
    ("nvme_timeout", re.compile(r"\bnvme\d*:? .*\btimeout\b.*|\bnvme\S*: I/O tag \d+ .*timeout", re.IGNORECASE)),
    ("nvme_abort", re.compile(r"\bnvme\S*:? .*\b(?:Abort status|aborting|Abort command)\b", re.IGNORECASE)),
    ("nvme_reset", re.compile(r"\bnvme\S*:? .*\b(?:resetting controller|will reset|controller reset|Removing after probe failure)\b",
                              re.IGNORECASE)),
    ("pi_write", re.compile(r"protection error, dev \S+, sector \d+ op 0x[0-9a-f]+:\((?:WRITE|ZONE_APPEND)\)"
                            r"|I/O Cmd\(0x1\) .*I/O Error \(sct 0x2 / sc 0x8[234]\)", re.IGNORECASE)),
    ("pi_read", re.compile(r"protection error, dev \S+, sector \d+ op 0x[0-9a-f]+:\(READ\)|\b(?:guard|ref|app) tag error at sector"
                           r"|I/O Cmd\(0x2\) .*I/O Error \(sct 0x2 / sc 0x8[234]\)", re.IGNORECASE)),
    ("nvme_status", re.compile(r"I/O Error \(sct 0x[0-9a-f]+ / sc 0x[0-9a-f]+\)", re.IGNORECASE)),
    ("medium_error", re.compile(r"critical medium error, dev", re.IGNORECASE)),
    ("io_error", re.compile(r"\bI/O error, dev \S+|\bBuffer I/O error on dev", re.IGNORECASE)),
)


@dataclass(frozen=True)
class Problem:
    kind: str
    line: str  # without the printk timestamp, at most 200 characters
    offset: int  # where the line starts in the text it was found in

    @property
    def family(self) -> str:
        return "crash" if self.kind in CRASH else "device"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "line": self.line}


def kind_of(line: str) -> str | None:
    for kind, pattern in _PATTERNS:
        if pattern.search(line):
            return kind
    return None


def detect(text: str) -> list[Problem]:
    """Every problem line of `text`, in order."""
    found: list[Problem] = []
    offset = 0
    for raw in text.splitlines(keepends=True):
        line = _TIMESTAMP.sub("", raw.strip())
        if line:
            kind = kind_of(line)
            if kind is not None:
                found.append(Problem(kind, line[:200], offset))
        offset += len(raw)
    return found


def first_crash(text: str) -> Problem | None:
    return next((p for p in detect(text) if p.family == "crash"), None)


@dataclass(frozen=True)
class Rule:
    """Why some problems are there: `label` is "expected" (the scenario provoked them) or
    "emulation" (a known fact of the emulated hardware), `why` the sentence that says so."""

    kinds: frozenset[str]
    why: str
    label: str = "expected"

    def explains(self, problem: Problem) -> bool:
        return problem.kind in self.kinds


def emulation_read_race(what: str) -> Rule:
    return Rule(frozenset({"pi_read"}), f"{what}: QEMU's NVMe reads a block's data and its PI in two steps, so a "
                "read racing a write to the same blocks can see the new PI with the old data (a real device is atomic "
                "per block); a READ guard error here is the emulation's", "emulation")


@dataclass
class Judgement:
    unexpected: list[Problem] = field(default_factory=list)
    explained: list[tuple[Problem, Rule]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.unexpected

    def headline(self) -> str:
        """One line for a case's reason: the first unexpected problem and how many there were."""
        if not self.unexpected:
            return ""
        first = self.unexpected[0]
        more = f" (+{len(self.unexpected) - 1} more)" if len(self.unexpected) > 1 else ""
        return f"kernel log: {first.kind}: {first.line[:140]}{more}"

    def to_dict(self, limit: int = 8) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.unexpected:
            out["unexpected"] = [p.to_dict() for p in self.unexpected[:limit]]
            out["unexpected_count"] = len(self.unexpected)
        for label in ("expected", "emulation"):
            rows = [(p, r) for p, r in self.explained if r.label == label]
            if rows:
                out[label] = {"count": len(rows), "why": sorted({r.why for _, r in rows}),
                              "lines": [p.to_dict() for p, _ in rows[:limit]]}
        return out


def judge(problems: Iterable[Problem], rules: Sequence[Rule] = ()) -> Judgement:
    out = Judgement()
    for problem in problems:
        rule = next((r for r in rules if r.explains(problem)), None)
        if rule is None:
            out.unexpected.append(problem)
        else:
            out.explained.append((problem, rule))
    return out


def summary(text: str, limit: int = 3) -> dict[str, list[str]]:
    """Kind -> its first lines (at most `limit`): for a report of everything a log holds."""
    found: dict[str, list[str]] = {}
    for p in detect(text):
        lines = found.setdefault(p.kind, [])
        if len(lines) < limit:
            lines.append(p.line)
    return found


def split_by_marker(text: str, marker: re.Pattern[str]) -> dict[str, str]:
    """The log cut at the lines a test suite writes to /dev/kmsg when a test starts ("run fstests
    generic/091 at ...", "run blktests nvme/010 at ..."): test name -> its window (a test run twice
    gets both windows)."""
    windows: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines(keepends=True):
        m = marker.search(line)
        if m:
            current = m.group(1)
            windows.setdefault(current, "")
            continue
        if current is not None:
            windows[current] += line
    return windows


FSTESTS_MARKER = re.compile(r"run fstests (\S+) at ")
BLKTESTS_MARKER = re.compile(r"run blktests (\S+) at ")
