"""Counting calls of kernel functions in a guest with kprobe events (tracefs), for scenarios that
must prove a code path ran (pin-audit's gup helpers, dio-bench's bounce): one event group per
user, recorded into the trace buffer, counted from it. Hist triggers would count in the kernel,
but those keyed on common_comm fail on 6.12, and iov_iter helpers are notrace (no kprobes)."""

from __future__ import annotations

import re
import shlex

from lab.errors import LabError
from lab.guest import Guest

TRACING = "/sys/kernel/tracing"


def trace_counts(text: str, keys: list[str]) -> dict[str, int]:
    """Hits per probe in the trace buffer ('dio_mutate-229 [001] ..... 12.95: pin: (pin_user_pages_fast+0x4/0x60)')."""
    counts = dict.fromkeys(keys, 0)
    for line in text.splitlines():
        m = re.search(r"\s(\w+): \(", line)
        if m and m.group(1) in counts and not line.startswith("#"):
            counts[m.group(1)] += 1
    return counts


class Kprobes:
    """kprobe events of one group in one guest: install, arm (optionally for one program), count."""

    def __init__(self, guest: Guest, group: str) -> None:
        self.guest = guest
        self.group = group
        self.probes: dict[str, str] = {}

    def install(self, wanted: dict[str, str]) -> dict[str, str]:
        """Add a probe per key (event name -> kernel function) for the functions this kernel has;
        the group's earlier events are removed first. Returns what was installed."""
        g = self.group
        self.guest.run(f"""set -e
mountpoint -q {TRACING} || mount -t tracefs nodev {TRACING}
cd {TRACING}
echo 0 > tracing_on
for e in $(ls events/{g} 2>/dev/null); do [ -d events/{g}/$e ] && echo 0 > events/{g}/$e/enable; done
grep -q '^p:{g}/' kprobe_events && sed -n 's/^p:{g}\\/\\([^ ]*\\).*/-:{g}\\/\\1/p' kprobe_events >> kprobe_events || true
""", timeout=60, check=True)
        symbols = self.guest.run("cat /proc/kallsyms", timeout=60).stdout
        self.probes = {key: fn for key, fn in wanted.items() if re.search(rf" [Tt] {fn}$", symbols, re.MULTILINE)}
        for key, fn in self.probes.items():
            self.guest.run(f"echo {shlex.quote(f'p:{g}/{key} {fn}')} >> {TRACING}/kprobe_events", timeout=30, check=True)
        return self.probes

    def arm(self, comm: str | None = None, buffer_kb: int = 8192) -> None:
        """Empty the buffer and record every installed probe (only calls made by `comm`, if given)."""
        script = f"cd {TRACING}\necho 0 > tracing_on\necho {buffer_kb} > buffer_size_kb\n"
        for key in self.probes:
            event = f"events/{self.group}/{key}"
            script += (f"echo 'comm == \"{comm}\"' > {event}/filter\n" if comm else f"echo 0 > {event}/filter\n")
            script += f"echo 1 > {event}/enable\n"
        self.guest.run(script + "echo > trace\necho 1 > tracing_on\n", timeout=30, check=True)

    def counts(self) -> dict[str, int]:
        """Stop recording and count the hits; an overrun buffer would undercount, so it is an error."""
        disable = "".join(f"echo 0 > events/{self.group}/{k}/enable; " for k in self.probes)
        text = self.guest.run(f"cd {TRACING}; echo 0 > tracing_on; {disable}cat trace; grep -h overrun per_cpu/cpu*/stats",
                              timeout=60).stdout
        if any(int(n) for n in re.findall(r"^overrun: (\d+)", text, re.MULTILINE)):
            raise LabError("the trace buffer overran: the call counts would be short (record for less time)")
        return trace_counts(text, list(self.probes))
