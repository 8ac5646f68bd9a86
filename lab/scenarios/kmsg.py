"""What the kernel said about integrity during a run: counts from dmesg text, rate limiting included."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

_SUPPRESSED = re.compile(r"(\S+): (\d+) callbacks suppressed")
_TS = re.compile(r"^\[\s*\d+\.\d+\]\s*")


@dataclass
class KernelMessages:
    protection_errors: int = 0  # "protection error, dev nvme0n1, sector ..." (block layer, writes)
    guard_tag_errors: int = 0  # "guard tag error at sector N (rcvd X, want Y)" (reads)
    ref_tag_errors: int = 0
    app_tag_errors: int = 0
    nvme_pi_status: int = 0  # "I/O Error (sct 0x2 / sc 0x82)": the controller rejected a guard
    io_errors: int = 0  # "I/O error, dev ..." lines of other kinds
    suppressed: dict[str, int] = field(default_factory=dict)  # rate limiter: function -> lines dropped
    samples: list[str] = field(default_factory=list)  # first lines of each kind, for the summary

    @property
    def suppressed_total(self) -> int:
        return sum(self.suppressed.values())

    @property
    def integrity_lines(self) -> int:
        return self.protection_errors + self.guard_tag_errors + self.ref_tag_errors + self.app_tag_errors + self.nvme_pi_status

    def to_dict(self) -> dict:
        d = asdict(self)
        d["suppressed_total"] = self.suppressed_total
        d["integrity_lines"] = self.integrity_lines
        return d


def parse(text: str, max_samples: int = 6) -> KernelMessages:
    out = KernelMessages()
    for raw in text.splitlines():
        line = _TS.sub("", raw.strip())
        if not line:
            continue
        m = _SUPPRESSED.search(line)
        if m:
            out.suppressed[m.group(1)] = out.suppressed.get(m.group(1), 0) + int(m.group(2))
            continue
        kind = None
        if "protection error" in line:
            kind = "protection_errors"
        elif "guard tag error" in line:
            kind = "guard_tag_errors"
        elif "ref tag error" in line:
            kind = "ref_tag_errors"
        elif "app tag error" in line:
            kind = "app_tag_errors"
        elif "sct 0x2 / sc 0x82" in line:
            kind = "nvme_pi_status"
        elif "I/O error" in line:
            kind = "io_errors"
        if kind:
            setattr(out, kind, getattr(out, kind) + 1)
            if len(out.samples) < max_samples and not any(s.split(",")[0] == line.split(",")[0] for s in out.samples):
                out.samples.append(line[:200])
    return out
