"""Errors the CLI turns into one line and a non-zero exit, never a traceback.

    LabError                 a failure the user can act on (exit 1: the run itself failed)
    +-- UsageError           bad input: topology, parameter, option, kernel reference, file (exit 2)
    |   +-- TopologyError    (lab.topology.render) a template or rendered document is wrong
    +-- BootError            a guest did not come up; carries machine, phase, argv and the evidence
    +-- GuestCommandError    a command in a guest could not be run or timed out
    +-- NotApplicable        (lab.scenarios.framework) the kernel or topology lacks what a scenario tests

Scenario code catches LabError to turn it into an ERROR verdict; KeyboardInterrupt and the lab's
Terminated (SIGTERM, SIGHUP) are BaseExceptions so that nothing on the way swallows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class LabError(Exception):
    """A failure the user can act on. exit_code 2 = bad input, 1 = the run itself failed."""

    exit_code = 1


class GuestCommandError(LabError):
    """A command in a guest could not be run, timed out, or (with check=True) failed."""


@dataclass(frozen=True)
class Result:
    """A guest command's outcome, whichever channel ran it."""

    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def checked(self, machine: str) -> "Result":
        """Itself when the command succeeded, else GuestCommandError with the last lines it printed."""
        if not self.ok:
            detail = (self.stderr or self.stdout).strip().splitlines()[-3:]
            raise GuestCommandError(f"{machine}: '{self.command[:120]}' exited {self.exit_code}: {' | '.join(detail)}")
        return self


class UsageError(LabError):
    """Bad input: a wrong topology, parameter, kernel reference or option."""

    exit_code = 2


# Why a boot failed, in the order a boot goes through them. Retry logic reads the phase.
BOOT_PHASES = (
    "qemu-exit",  # QEMU exited (bad argv, missing file, a crash)
    "qmp",  # QEMU runs but its monitor never answered
    "console",  # the guest printed nothing before the silence deadline (infrastructure)
    "panic",  # the guest kernel panicked
    "tcg-int3",  # the known multi-threaded TCG early-boot oops (int3 in sched_clock_cpu)
    "kvm-internal-error",  # QEMU stopped the guest: KVM could not handle an exit (seen nested under TCG)
    "stall",  # under TCG: the console stopped mid-boot, no kernel problem in it (the emulator's stall)
    "ready",  # the guest printed but never reached the lab's ready marker
    "channel",  # the ready marker came but the command channel (guest agent or SSH) did not answer
)
# Failures of the emulator or host, not of the kernel under test: a fresh boot is allowed.
INFRASTRUCTURE_PHASES = ("console", "tcg-int3", "nvme-timeout", "kvm-internal-error", "stall")


@dataclass
class BootEvidence:
    machine: str
    phase: str
    detail: str
    argv: list[str] = field(default_factory=list)
    stderr_tail: str = ""
    console_tail: str = ""
    console_path: str = ""
    seconds: float = 0.0


class BootError(LabError):
    """A guest did not come up. The first line says which machine, which phase and why; the rest
    carries the console tail; `evidence` keeps everything (argv, stderr, console) for the record."""

    def __init__(self, evidence: BootEvidence | list[BootEvidence]) -> None:
        self.all = evidence if isinstance(evidence, list) else [evidence]
        self.evidence = self.all[0]
        lines = []
        for ev in self.all:
            lines.append(f"{ev.machine}: {ev.detail} [phase {ev.phase}]")
        ev = self.evidence
        if ev.stderr_tail:
            lines.append(f"    QEMU stderr: {ev.stderr_tail}")
        if ev.console_path:
            lines.append(f"    console {ev.console_path}:")
            lines.append(f"    {ev.console_tail}")
        super().__init__("\n".join(lines))

    @property
    def phase(self) -> str:
        return self.evidence.phase

    @property
    def infrastructure(self) -> bool:
        return all(ev.phase in INFRASTRUCTURE_PHASES for ev in self.all)
