"""A suite's check run in the guest, watched from the host: started detached (setsid), its output
read back every few seconds, the running test and the counts shown as progress, and the whole run
bounded. A test is killed (the suite then moves on) when it is hung, that is when its processes
have used no CPU and moved no I/O for `stall_timeout` seconds, or when it runs past `test_timeout`
whatever it does: under TCG a test that is merely slow (generic/155 writes 4 x 500 MB with O_DIRECT
over NFS, 25 minutes here) must not be taken for a hung one. Each poll hands the output so far to
the caller, so an interrupted or timed-out run still has every finished test."""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from lab.progress import step

RUN_DIR = "/root/lab-suite-run"


class Suite(Protocol):
    def running(self, output: str) -> str | None:
        """The test the output says is running now (started, no result yet)."""

    def counts(self, output: str) -> dict[str, int]:
        """Finished tests by status so far."""

    def kill_test(self, test: str) -> str:
        """A shell command that kills this test's processes (the suite records it as failed and goes on)."""


@dataclass
class Monitored:
    output: str = ""
    timed_out_tests: dict[str, float] = field(default_factory=dict)  # test -> seconds when it was killed
    kill_reasons: dict[str, str] = field(default_factory=dict)  # test -> why: no progress, or past the limit
    run_timed_out: bool = False
    exit_code: int | None = None
    seconds: float = 0.0


_START = """mkdir -p {dir} && rm -f {dir}/out {dir}/rc && cat > {dir}/run.sh <<'LAB_RUN_EOF'
{script}
LAB_RUN_EOF
setsid sh -c 'sh {dir}/run.sh > {dir}/out 2>&1 < /dev/null; echo $? > {dir}/rc' > /dev/null 2>&1 < /dev/null &
echo $! > {dir}/pid
"""
# Exact byte accounting: the size is taken first, then exactly those bytes after the offset. The
# activity figure is the CPU ticks plus the I/O (in 64 KiB) of every process in the run's session,
# read with shell builtins: it changes while the running test does anything at all.
_POLL = """cd {dir} || exit 97
size=$(stat -c %s out 2>/dev/null || echo 0)
if [ -f rc ]; then echo "LAB-RC $(cat rc)"; else echo "LAB-RC -"; fi
echo "LAB-SIZE $size"
read -r sid < pid
act=0
for st in /proc/[0-9]*/stat; do
    read -r line < "$st" 2>/dev/null || continue
    set -- ${{line##*) }}
    [ "$4" = "$sid" ] || continue
    act=$((act + ${{12}} + ${{13}}))
    while read -r key value; do
        case $key in rchar:|wchar:) act=$((act + value / 65536)) ;; esac
    done < "${{st%/stat}}/io" 2>/dev/null
done
echo "LAB-ACTIVITY $act"
tail -c +$(({offset} + 1)) out 2>/dev/null | head -c $(($size - {offset}))
"""
_POLL_RE = re.compile(r"\ALAB-RC (\S+)\nLAB-SIZE (\d+)\n(?:LAB-ACTIVITY (\d+)\n)?", re.S)
_KILL_RUN = "kill -KILL -- -$(cat {dir}/pid) 2>/dev/null; sleep 1; echo 137 > {dir}/rc"


def parse_poll(text: str) -> tuple[int | None, bool, int, str]:
    """(exit code or None, finished, new size, new output) from one poll's stdout."""
    m = _POLL_RE.match(text)
    if not m:
        return None, False, -1, ""
    rc = m.group(1)
    finished = rc != "-"
    return (int(rc) if finished and rc.lstrip("-").isdigit() else None), finished, int(m.group(2)), text[m.end():]


def poll_activity(text: str) -> int | None:
    """The run's activity figure from one poll's stdout (None when the poll did not say)."""
    m = _POLL_RE.match(text)
    return int(m.group(3)) if m and m.group(3) is not None else None


def progress_line(running: str | None, running_for: float, counts: dict[str, int], total: int) -> str:
    """The detail after the step's title (which names the suite and section already)."""
    done = sum(counts.values())
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    now = f"{running} running {int(running_for) // 60}m{int(running_for) % 60:02d}s" if running else "between tests"
    return f"{now}; {done}/{total} done" + (f" ({tally})" if tally else "")


def run_monitored(guest, script: str, suite: Suite, label: str, total: int, test_timeout: float, run_timeout: float,
                  on_output: Callable[[str], None] | None = None, poll: float = 5.0, run_dir: str = RUN_DIR,
                  on_kill: Callable[[str, float], None] | None = None, stall_timeout: float | None = None) -> Monitored:
    """Run script (a suite's check) in the guest and watch it; see the module's docstring."""
    result = Monitored()
    guest.run(_START.format(dir=run_dir, script=script), timeout=60, check=True)
    started = time.monotonic()
    offset = 0
    current: str | None = None
    current_since = started
    activity: int | None = None
    active_at = started
    with step(f"{label}: {total} test(s)") as st:
        while True:
            time.sleep(poll)
            res = guest.run(_POLL.format(dir=run_dir, offset=offset), timeout=120)
            rc, finished, size, chunk = parse_poll(res.stdout)
            if size >= 0:
                result.output += chunk
                offset = size
            now = time.monotonic()
            if on_output is not None and chunk:
                on_output(result.output)
            if finished:
                result.exit_code = rc
                break
            running = suite.running(result.output)
            if running != current:
                current, current_since, active_at = running, now, now
            seen = poll_activity(res.stdout)
            if seen is not None and seen != activity:
                activity, active_at = seen, now
            why = None
            if current and now - current_since > test_timeout:
                why = f"still running after {now - current_since:.0f} s (--test-timeout)"
            elif current and stall_timeout is not None and now - active_at > stall_timeout:
                why = f"no progress for {now - active_at:.0f} s: its processes used no CPU and did no I/O (--stall-timeout)"
            if why and current and current not in result.timed_out_tests:
                result.timed_out_tests[current] = round(now - current_since, 1)
                result.kill_reasons[current] = why
                st.update(f"{current}: {why}; killing it")
                guest.run(suite.kill_test(current), timeout=60)
                if on_kill is not None:  # recorded now: an interrupted run must still say it hung
                    on_kill(current, result.timed_out_tests[current])
                continue
            if now - started > run_timeout:
                result.run_timed_out = True
                guest.run(_KILL_RUN.format(dir=run_dir), timeout=60)
                continue
            st.update(progress_line(current, now - current_since, suite.counts(result.output), total))
    result.seconds = round(time.monotonic() - started, 1)
    return result


_KILLTREE = 'killtree() { for c in $(pgrep -P "$1"); do killtree "$c"; done; kill -KILL "$1" 2>/dev/null; }\n'


def kill_tree_command(pattern: str) -> str:
    """Kill every process whose command line matches pattern, with all its descendants."""
    return _KILLTREE + f'for p in $(pgrep -f {shlex.quote(pattern)}); do killtree "$p"; done; true\n'


def kill_children_command(pattern: str) -> str:
    """Kill the children (and their descendants) of the processes matching pattern, not the processes
    themselves: a suite that runs its test in a subshell of itself goes on to the next test."""
    return _KILLTREE + f'for p in $(pgrep -f {shlex.quote(pattern)}); do for c in $(pgrep -P "$p"); do killtree "$c"; done; done; true\n'
