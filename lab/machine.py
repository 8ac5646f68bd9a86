"""One QEMU process: launch with QMP on a unix socket, console to a file, readiness (the ready
marker, then the command channel: the guest agent, or SSH), and a shutdown that escalates from
guest poweroff to QMP quit to signals. Modelled on QEMU's
python/qemu/machine and labgrid's QEMUDriver, smaller.

A machine moves through CREATED -> LAUNCHED -> READY -> STOPPING -> STOPPED (reset() goes back to
CREATED for another boot attempt); every transition is timed, so each boot's phases land in the
manifest for free, and a failed boot raises one BootError naming the phase it failed in."""

from __future__ import annotations

import ctypes
import enum
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from lab import kernel_log
from lab.errors import BootError, BootEvidence, LabError
from lab.guest import Guest
from lab.qmp_link import QmpLink

LOG = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
READY_MARKER = "LAB-READY"
# The guest boot stages print "lab-init: [UPTIME] what" (images/init): guest-side phase times.
_STAGE_RE = re.compile(r"lab-init: \[(\d+\.\d+)\] (.+)")
# The one emulator fault the lab retries (multi-threaded TCG in QEMU 7.2 patching kernel text).
_INT3_OOPS = re.compile(r"Oops: int3\b")
_INT3_RIP = re.compile(r"RIP: \S*?\bsched_clock_cpu\b")
# The same fault elsewhere: the trap came from an int3 the kernel's text patching (static keys,
# alternatives) had put in and already replaced, so the byte before RIP is no longer 0xcc. A real
# int3 left in kernel text still reads "cc <..>".
_STALE_INT3_CODE = re.compile(r"^.*Code: (?:[0-9a-f]{2} )*([0-9a-f]{2}) <[0-9a-f]{2}>", re.MULTILINE)
# An emulated NVMe controller that never answered its first admin command (the Identify times out
# after the kernel's 60 s admin timeout and the probe fails with -4): seen now and then under
# multi-threaded TCG with two controllers; the topology's device is missing, so the boot failed.
_PANIC = re.compile(r"Kernel panic - not syncing: ([^\n]*)")
# Where one oops's report ends: its end-of-trace line, the next oops, or a panic.
_OOPS_END = re.compile(r"---\[ end trace|Oops: |Kernel panic - not syncing")
_NVME_IDENTIFY_TIMEOUT = re.compile(r"(nvme nvme\d+): Identify Controller failed \(-4\)")
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """In the child before exec: SIGKILL QEMU when the lab dies, even by SIGKILL, so no guest
    outlives it. A new session keeps the terminal's Ctrl-C for the lab, which shuts down cleanly."""
    os.setsid()
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class State(enum.Enum):
    CREATED = "created"
    LAUNCHED = "launched"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"


_ALLOWED = {
    State.CREATED: {State.LAUNCHED, State.STOPPED},
    State.LAUNCHED: {State.READY, State.STOPPING},
    State.READY: {State.STOPPING},
    State.STOPPING: {State.STOPPED},
    State.STOPPED: {State.CREATED},
}


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def console_tail(text: str, lines: int = 25) -> str:
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n    ".join(tail) or "(console is empty)"


def _own_oops(text: str, start: int) -> str:
    """The oops that starts at `start`, up to its end-of-trace line or the next oops or panic: what
    its RIP and Code lines are read from (never another oops's)."""
    rest = text[start:]
    ends = [m.start() for m in _OOPS_END.finditer(rest, 1)]
    return rest[:min(ends)] if ends else rest


def stale_int3(text: str) -> str | None:
    """Where the multi-threaded TCG fault struck, when `text` shows it: an int3 oops in
    sched_clock_cpu, or at a site whose int3 the kernel's text patching had already replaced (the
    byte before RIP no longer cc). A real int3 left in kernel text still reads "cc <..>". An int3
    oops after another kernel problem (oops, BUG, KASAN, WARNING, panic) in the same boot is not the
    emulator's: the kernel under test had already gone wrong."""
    oops = _INT3_OOPS.search(text)
    if not oops:
        return None
    if kernel_log.first_crash(text[:oops.start()]) is not None:
        return None
    own = _own_oops(text, oops.start())
    if _INT3_RIP.search(own):
        return "sched_clock_cpu"
    code = _STALE_INT3_CODE.search(own)
    if code and code.group(1) != "cc":
        rip = re.search(r"RIP: \S+:(\S+)", own)
        return rip.group(1) if rip else "?"
    return None


def emulator_fault_after_ready(text: str) -> str | None:
    """The same emulator fault after the ready marker: text patching at run time (tracepoints,
    kprobes and static keys turned on and off by a scenario) meets it too. None for a console
    without it, including a real int3, any other oops of the kernel under test, and an int3 oops
    that followed another kernel problem in that boot."""
    if READY_MARKER not in text:
        return None
    before, after = text.split(READY_MARKER, 1)
    if kernel_log.first_crash(before) is not None:
        return None
    where = stale_int3(after)
    if where is None:
        return None
    return f"the guest kernel oopsed on an int3 already patched away at {where} (the known multi-threaded TCG fault)"


def classify_console(text: str) -> tuple[str, str] | None:
    """(phase, detail) when the console shows the guest kernel died before the lab's ready marker.
    The emulator's int3 fault first (only when nothing went wrong before it), then a panic (anywhere
    in the console when an NVMe controller also timed out), then an NVMe controller that never
    answered."""
    before_ready = text.split(READY_MARKER, 1)[0]
    where = stale_int3(before_ready)
    if where == "sched_clock_cpu":
        return "tcg-int3", "guest kernel oopsed on int3 in sched_clock_cpu during early boot (the known multi-threaded TCG fault)"
    if where is not None:
        return "tcg-int3", (f"guest kernel oopsed on an int3 already patched away at {where} "
                            "during early boot (the known multi-threaded TCG fault)")
    timeout = _NVME_IDENTIFY_TIMEOUT.search(before_ready)
    # A panic before the ready marker, or anywhere when the NVMe signature would otherwise read as the
    # emulator's: the kernel's panic is never retried away.
    m = _PANIC.search(text if timeout else before_ready)
    if m:
        return "panic", f"guest kernel panicked: {m.group(1).strip()[:120]}"
    m = timeout
    if m:
        return "nvme-timeout", (f"{m.group(1)} of the topology never answered its Identify command (timed out in the "
                                "guest, the emulated controller did not respond)")
    return None


def guest_stages(text: str) -> dict[str, float]:
    """Guest uptime at each stage line of the lab's init ("stage 1: root mounted" -> 3.91)."""
    out: dict[str, float] = {}
    for m in _STAGE_RE.finditer(text):
        out.setdefault(m.group(2).strip(), float(m.group(1)))
    return out


# Stage 2 says this once it started qemu-ga on the lab's port; without it the lab uses SSH.
AGENT_STAGE = "agent started"
# The guest's stage lines in boot order, each phase named after the work that ends at that line.
GUEST_PHASES = {"stage 1: init": "kernel to /init", "stage 1: modules loaded": "stage 1 modules",
                "stage 1: root mounted": "root disk found and mounted", "stage 1: switching root": "stage 1 mounts",
                "stage 2": "switch_root to stage 2",
                AGENT_STAGE: "stage 2 to agent", "network up": "stage 2 network",
                "sshd started": "stage 2 to sshd", "drivers loaded": "stage 2 drivers",
                "ready": "late set-up (RDMA links)"}


def boot_phases(record: dict[str, Any], first_command: float | None = None) -> dict[str, float]:
    """Seconds per phase of one boot, in order, from its manifest record: host events are seconds
    since QEMU was launched, guest stages are the guest's uptime; the ready marker ties both clocks."""
    events, stages = record.get("events", {}), record.get("guest_stages", {})
    phases: dict[str, float] = {}
    if "qmp" in events:
        phases["QEMU start to QMP"] = events["qmp"]
    if "ready-marker" in events and "ready" in stages:
        kernel_start = events["ready-marker"] - stages["ready"]  # host time at guest uptime 0
        phases["firmware and kernel load"] = kernel_start - phases.get("QEMU start to QMP", 0.0)
        previous = 0.0
        # In the order the guest reached them (stage 2 loads drivers while the network comes up);
        # what comes after the ready marker (sshd, for people) is not on the way to a command.
        reached = (st for st in GUEST_PHASES if st in stages and stages[st] <= stages["ready"])
        for stage in sorted(reached, key=lambda st: stages[st]):
            phases[GUEST_PHASES[stage]] = stages[stage] - previous
            previous = stages[stage]
        if "connected" in events:
            phases["channel connect"] = events["connected"] - events["ready-marker"]
    if first_command is not None and "connected" in events:
        phases["first command"] = first_command - events["connected"]
    return {k: round(v, 3) for k, v in phases.items()}


class QemuMachine:
    def __init__(self, name: str, argv: list[str], qmp_socket: Path, console_log: Path, stderr_log: Path,
                 key_file: Path, agent_socket: Path | None = None) -> None:
        self.name = name
        self.agent_socket = agent_socket
        self.argv = argv
        self.qmp_socket = qmp_socket
        self.console_log = console_log
        self.stderr_log = stderr_log
        self.key_file = key_file
        self.proc: subprocess.Popen | None = None
        self.qmp: QmpLink | None = None
        self.ssh_port: int | None = None
        self.guest: Guest | None = None
        self.state = State.CREATED
        self.launched_at = 0.0
        self.ready_at = 0.0
        self.events: dict[str, float] = {}  # event -> seconds since launch (this attempt)
        self.shutdown_steps: list[dict[str, Any]] = []
        self.qmp_timeout = 30.0  # QEMU creates its monitor socket at once; 30 s covers a loaded host

    # -- state ------------------------------------------------------------------------------
    def transition(self, state: State) -> None:
        """The one way a machine changes state: refused when the state machine does not allow it."""
        if state not in _ALLOWED[self.state]:
            raise LabError(f"{self.name}: cannot go from {self.state.value} to {state.value}")
        LOG.debug("%s: %s -> %s", self.name, self.state.value, state.value)
        self.state = state
        self._event(state.value)

    def _event(self, name: str) -> None:
        if self.launched_at:
            self.events.setdefault(name, round(time.monotonic() - self.launched_at, 3))

    def boot_record(self) -> dict[str, Any]:
        """Host-side events and the guest's own stage times of this boot, for the manifest."""
        return {"events": dict(self.events), "guest_stages": guest_stages(read_text(self.console_log)),
                "shutdown": list(self.shutdown_steps)}

    def reset(self) -> None:
        """Forget a stopped process so that launch() can start the machine again."""
        if self.state != State.CREATED:
            self.transition(State.CREATED)
        self.proc = None
        self.qmp = None
        self.ssh_port = None
        self.guest = None
        self.events = {}
        self.shutdown_steps = []
        self.launched_at = 0.0
        self.qmp_socket.unlink(missing_ok=True)

    # -- launch -----------------------------------------------------------------------------
    def launch(self, die_with_parent_process: bool = True) -> None:
        """Start QEMU and connect to its monitor. Raises BootError (phase qemu-exit or qmp)."""
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        LOG.debug("%s: launching %s", self.name, " ".join(self.argv))
        with open(self.stderr_log, "ab") as err:
            self.launched_at = time.monotonic()
            try:
                self.proc = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent if die_with_parent_process else os.setsid,
                )
            except OSError as exc:
                raise BootError(self._evidence("qemu-exit", f"cannot start {self.argv[0]}: {exc.strerror}")) from exc
        self.transition(State.LAUNCHED)
        self._connect_qmp()
        self._event("qmp")
        try:
            self.ssh_port = self._forwarded_port()
        except LabError as exc:
            raise BootError(self._evidence("qmp", str(exc))) from exc
        self.guest = Guest(self.name, self.ssh_port, self.key_file, self.agent_socket)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _connect_qmp(self) -> None:
        timeout = self.qmp_timeout
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise BootError(self._exited_evidence("at start"))
            if self.qmp_socket.exists():
                qmp = QmpLink(str(self.qmp_socket))
                try:
                    qmp.connect()
                    self.qmp = qmp
                    return
                except (OSError, EOFError, Exception) as exc:  # qemu.qmp raises its own types
                    last = exc
            time.sleep(0.02)
        err = BootError(self._evidence("qmp", f"QMP did not answer within {timeout:.0f} s"))
        raise err from last

    def qmp_cmd(self, command: str, **args: Any) -> Any:
        if not self.qmp:
            raise LabError(f"{self.name}: QMP is not connected")
        try:
            return self.qmp.cmd(command, **args)
        except Exception as exc:  # a dead socket or an error reply: one line for the user
            raise LabError(f"{self.name}: QMP {command} failed: {exc}") from exc

    def hmp(self, command: str) -> str:
        return str(self.qmp_cmd("human-monitor-command", **{"command-line": command}))

    def _forwarded_port(self) -> int:
        # The lab asks slirp for port 0 and reads back what it got: no race between two labs.
        text = self.hmp("info usernet")
        for line in text.splitlines():
            if "HOST_FORWARD" in line:
                fields = line.split()
                return int(fields[3])
        raise LabError(f"no SSH forwarding in 'info usernet': {text!r}")

    def stderr_tail(self) -> str:
        lines = read_text(self.stderr_log).strip().splitlines()[-5:]
        return " | ".join(lines)

    def kvm_internal_error(self) -> str | None:
        """QEMU's own word that KVM could not run the guest ("KVM internal error. Suberror: 1"): the
        hypervisor failed, not the kernel under test. QEMU pauses such a guest rather than exiting."""
        for line in read_text(self.stderr_log).splitlines():
            if "KVM internal error" in line:
                return line.strip()[:160]
        return None

    def _evidence(self, phase: str, detail: str) -> BootEvidence:
        return BootEvidence(
            machine=self.name, phase=phase, detail=detail, argv=list(self.argv), stderr_tail=self.stderr_tail(),
            console_tail=console_tail(read_text(self.console_log)), console_path=str(self.console_log),
            seconds=round(time.monotonic() - self.launched_at, 1) if self.launched_at else 0.0,
        )

    def _exited_evidence(self, when: str) -> BootEvidence:
        assert self.proc is not None
        died = classify_console(read_text(self.console_log))
        if died:
            return self._evidence(*died)
        return self._evidence("qemu-exit", f"QEMU exited {when} (exit {self.proc.returncode})")

    # -- readiness --------------------------------------------------------------------------
    def wait_ready(self, timeout: float, silence: float | None = None, stall: float | None = None) -> float:
        """Until stage 2 has finished (the ready marker) and the command channel answers. Returns
        seconds since launch. A console still empty after `silence` seconds is an infrastructure
        failure; so is one that stopped growing for `stall` seconds before the ready marker with no
        kernel problem in it (given under TCG only: seen once in a CI run, a guest silent for 240 s
        after "stage 1: modules loaded" while its peer booted, the same kernel booting 20 times in a
        row right after)."""
        assert self.guest is not None
        deadline = time.monotonic() + timeout
        last_size, last_growth = -1, time.monotonic()
        while True:
            if not self.alive():
                raise BootError(self._exited_evidence("during boot"))
            kvm_error = self.kvm_internal_error()
            if kvm_error:
                raise BootError(self._evidence("kvm-internal-error", f"QEMU stopped the guest during boot: {kvm_error}"))
            elapsed = time.monotonic() - self.launched_at
            size = self.console_log.stat().st_size if self.console_log.exists() else 0
            if size != last_size:
                last_size, last_growth = size, time.monotonic()
            if size:
                self._event("console")
            elif silence is not None and elapsed > silence:
                raise BootError(self._evidence("console", f"the guest printed nothing in {silence:.0f} s"))
            if size and stall is not None and time.monotonic() - last_growth > stall:
                text = read_text(self.console_log)
                if READY_MARKER not in text and classify_console(text) is None and not kernel_log.detect(text):
                    last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
                    raise BootError(self._evidence("stall", f"the guest printed nothing for {stall:.0f} s after {last[:100]!r}, "
                                                            "with no kernel problem in its console"))
            left = deadline - time.monotonic()
            tail = self._console_text_tail()
            if left <= 0:
                text = read_text(self.console_log)
                died = classify_console(text)
                if died:
                    raise BootError(self._evidence(*died))
                if READY_MARKER in text:
                    raise BootError(self._evidence("channel", f"ready, but the {self.guest.channel} channel did not answer "
                                                              f"within {timeout:.0f} s"))
                raise BootError(self._evidence("ready", f"not ready after {timeout:.0f} s (the guest never reached the ready marker)"))
            # Stage 2 prints the marker once the agent, drivers and RDMA are up. Connecting before it
            # could meet a guest still loading the drivers the topology promised.
            if READY_MARKER in tail:
                self._event("ready-marker")
                text = read_text(self.console_log)
                died = classify_console(text)
                if died:  # ready, but a device the topology promised never came up
                    raise BootError(self._evidence(*died))
                if self.guest.agent is not None and AGENT_STAGE not in guest_stages(text):
                    self.guest.drop_agent()  # an image without qemu-ga: SSH does it all
                if self.guest.try_connect(min(10.0, left)):
                    self._event("connected")
                    self.ready_at = time.monotonic()
                    self.transition(State.READY)
                    return self.ready_at - self.launched_at
            time.sleep(0.05)

    def _console_text_tail(self) -> str:
        try:
            with open(self.console_log, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    # -- shutdown ---------------------------------------------------------------------------
    def shutdown(self, timeout: float = 10.0) -> None:
        """Guest poweroff, then QMP quit, then SIGTERM, then SIGKILL. Never raises; each step and
        whether it ended QEMU is recorded in shutdown_steps."""
        if self.proc is None or self.state in (State.CREATED, State.STOPPED):
            return
        if self.state != State.STOPPING:
            self.transition(State.STOPPING)
        steps = [("poweroff", self._poweroff, timeout / 2), ("qmp-quit", self._quit, timeout / 4),
                 ("sigterm", lambda: self._signal(signal.SIGTERM), timeout / 4),
                 ("sigkill", lambda: self._signal(signal.SIGKILL), 5.0)]
        if not self.alive():
            self.shutdown_steps.append({"step": "already-exited", "exit": self.proc.returncode})
        for name, action, wait in steps:
            if not self.alive():
                break
            if name == "poweroff" and self.guest is None:
                continue
            try:
                action()
            except Exception:  # a step that cannot be taken is recorded; the next one follows
                LOG.debug("%s: shutdown step %s failed", self.name, name, exc_info=True)
            self._wait(wait)
            self.shutdown_steps.append({"step": name, "ended_qemu": not self.alive()})
            LOG.debug("%s: shutdown step %s: %s", self.name, name, "exited" if not self.alive() else "still running")
        if self.guest is not None:
            self.guest.close()
        if self.qmp is not None:
            try:
                self.qmp.close()
            except Exception:
                LOG.debug("%s: closing QMP failed", self.name, exc_info=True)
            self.qmp = None
        if self.proc.poll() is None:
            self.proc.wait()
        self.transition(State.STOPPED)

    @property
    def stopped_by(self) -> str | None:
        return next((s["step"] for s in self.shutdown_steps if s.get("ended_qemu") or s["step"] == "already-exited"), None)

    def _poweroff(self) -> None:
        assert self.guest is not None
        # sysrq-o powers off at once; the root is a throw-away overlay so a clean unmount buys nothing.
        self.guest.fire_and_forget("sync; echo o > /proc/sysrq-trigger")

    def _quit(self) -> None:
        if self.qmp is not None:
            self.qmp.cmd("quit")

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def _wait(self, seconds: float) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=max(seconds, 0.1))
        except subprocess.TimeoutExpired:
            pass


def qemu_version_of(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else "unknown"
