"""QemuMachine against a stand-in process that speaks QMP (tests/fixtures/fake_qemu.py): every way a
launch fails gives one BootError naming the machine and phase and carrying the argv, QEMU's stderr
and the console; shutdown escalates and records which step ended the process; states are guarded."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lab.errors import BootError, LabError
from lab.machine import QemuMachine, State, classify_console, guest_stages

FAKE = Path(__file__).resolve().parent.parent / "fixtures" / "fake_qemu.py"


@pytest.fixture
def machine(tmp_path, monkeypatch):
    def make(mode: str, agent: bool = False) -> QemuMachine:
        monkeypatch.setenv("FAKE_QEMU_MODE", mode)
        qmp = tmp_path / "qmp.sock"
        console = tmp_path / "console.log"
        argv = [sys.executable, str(FAKE), "-name", "lab-vm", "-qmp", f"unix:{qmp},server=on,wait=off",
                "-chardev", f"file,id=console,path={console}"]
        return QemuMachine("vm", argv, qmp, console, tmp_path / "stderr.log", tmp_path / "key",
                           agent_socket=tmp_path / "agent.sock" if agent else None)

    made: list[QemuMachine] = []
    yield lambda mode, agent=False: made.append(make(mode, agent)) or made[-1]
    for m in made:
        m.shutdown(timeout=2)


def boot(m: QemuMachine, timeout: float = 3, silence: float | None = None) -> BootError:
    with pytest.raises(BootError) as info:
        m.launch()
        m.wait_ready(timeout, silence)
    return info.value


def test_qemu_that_exits_at_start(machine):
    err = boot(machine("exit"))
    ev = err.evidence
    assert (ev.machine, ev.phase) == ("vm", "qemu-exit")
    assert "QEMU exited at start (exit 1)" in ev.detail
    assert "Property 'nvme.bogus' not found" in ev.stderr_tail
    assert ev.argv[1] == str(FAKE) and ev.console_path.endswith("console.log")
    assert str(err).splitlines()[0] == "vm: QEMU exited at start (exit 1) [phase qemu-exit]"
    assert not err.infrastructure


def test_qmp_that_never_answers(machine):
    m = machine("no-qmp")
    m.qmp_timeout = 1.0
    err = boot(m)
    assert err.phase == "qmp" and "QMP did not answer within 1 s" in err.evidence.detail


def test_silent_console_is_an_infrastructure_failure(machine):
    err = boot(machine("silent"), timeout=10, silence=1)
    assert err.phase == "console" and "printed nothing in 1 s" in err.evidence.detail
    assert err.infrastructure  # the lab boots again for this, and says so
    assert err.evidence.console_tail == "(console is empty)"


def test_kernel_panic_is_not_retried(machine):
    err = boot(machine("panic"))
    assert err.phase == "panic" and "VFS: Unable to mount root fs" in err.evidence.detail
    assert not err.infrastructure
    assert "Kernel panic" in err.evidence.console_tail


def test_the_tcg_int3_oops_is_recognised_exactly(machine):
    err = boot(machine("int3"))
    assert err.phase == "tcg-int3" and err.infrastructure


def test_a_console_that_stops_mid_boot_is_a_stall_only_with_nothing_wrong_in_it(machine):
    """Given a stall time (the lab gives one under TCG), a console that stops growing before the ready
    marker is the emulator's stall, retried; one that stopped after a kernel warning is not."""
    m = machine("stall")
    with pytest.raises(BootError) as info:
        m.launch()
        m.wait_ready(30, None, 1.5)
    err = info.value
    assert err.phase == "stall" and err.infrastructure and err.evidence.seconds < 10
    assert "printed nothing for 2 s after 'lab-init: [0.93] stage 1: modules loaded'" in err.evidence.detail
    m = machine("stall-after-warning")
    with pytest.raises(BootError) as info:
        m.launch()
        m.wait_ready(4, None, 1.0)
    assert info.value.phase == "ready" and not info.value.infrastructure
    assert boot(machine("stall"), timeout=3).phase == "ready"  # no stall time given (KVM): the timeout decides


def test_a_kvm_internal_error_is_the_hypervisors_at_once(machine):
    """Seen with KVM nested in a TCG guest: QEMU pauses the guest and says why on stderr. The boot
    fails at once (not after the ready timeout) as the hypervisor's failure."""
    err = boot(machine("kvm-internal-error"), timeout=30)
    assert err.phase == "kvm-internal-error" and err.infrastructure
    assert "KVM internal error. Suberror: 1" in err.evidence.detail and err.evidence.seconds < 10


def test_a_controller_that_never_answered_fails_the_boot_for_the_emulator(machine):
    err = boot(machine("nvme-timeout"))
    assert err.phase == "nvme-timeout" and err.infrastructure and "nvme nvme0" in err.evidence.detail


def test_console_classification():
    int3 = "Oops: int3: 0000 [#1]\nRIP: 0010:sched_clock_cpu+0x10/0x1a0\nKernel panic - not syncing: Fatal exception\n"
    assert classify_console(int3)[0] == "tcg-int3"
    # An int3 elsewhere is the kernel under test: a panic, not retried.
    assert classify_console(int3.replace("sched_clock_cpu", "ext4_fill_super"))[0] == "panic"
    # The same emulator fault at another patched site: the byte before RIP is no longer int3.
    stale = ("[    1.90] Oops: int3: 0000 [#1] SMP NOPTI\n[    1.91] RIP: 0010:set_next_task_fair+0x609/0x780\n"
             "[    1.91] Code: 0f 84 42 01 00 00 48 0f 47 c2 eb 6d 0f <1f> 44 00 00 48 8b 3c 24\n"
             "[    1.91] Kernel panic - not syncing: Fatal exception in interrupt\n")
    phase, detail = classify_console(stale)
    assert phase == "tcg-int3" and "set_next_task_fair+0x609/0x780" in detail
    # An int3 still in the text (cc before RIP) is the kernel under test.
    assert classify_console(stale.replace("eb 6d 0f <1f>", "eb 6d cc <1f>"))[0] == "panic"
    # An emulated controller that never answered: the boot failed for the emulator, retried.
    timeout = "[   68.57] nvme nvme0: Identify Controller failed (-4)\nlab-init: [68.72] ready\nLAB-READY\n"
    phase, detail = classify_console(timeout)
    assert phase == "nvme-timeout" and "nvme nvme0" in detail
    # After the ready marker nothing counts as an early-boot fault.
    assert classify_console("LAB-READY\n" + int3) is None
    assert classify_console("lab-init: [1.0] stage 1\n") is None
    assert guest_stages("lab-init: [1.20] stage 1: modules loaded\nx\nlab-init: [2.5] ready\n") == {
        "stage 1: modules loaded": 1.2, "ready": 2.5}


def test_ready_marker_without_ssh(machine):
    m = machine("ready")
    err = boot(m, timeout=2)
    assert err.phase == "channel" and "the ssh channel did not answer" in err.evidence.detail
    record = m.boot_record()
    assert {"launched", "qmp", "console", "ready-marker"} <= set(record["events"])
    assert record["guest_stages"]["ready"] == 2.5


def test_ready_marker_with_a_silent_agent(machine):
    m = machine("agent-ready", agent=True)
    err = boot(m, timeout=2)
    assert err.phase == "channel" and "the agent channel did not answer" in err.evidence.detail


def test_a_guest_that_started_no_agent_is_driven_over_ssh(machine):
    # The machine has an agent port, but stage 2 did not say it started qemu-ga (an image without it).
    m = machine("ready", agent=True)
    err = boot(m, timeout=2)
    assert m.guest is not None and m.guest.channel == "ssh"
    assert err.phase == "channel" and "the ssh channel did not answer" in err.evidence.detail


def test_shutdown_escalation_is_recorded(machine):
    m = machine("ready")
    with pytest.raises(BootError):
        m.launch()
        m.wait_ready(1)
    m.shutdown(timeout=2)
    assert m.state == State.STOPPED and not m.alive()
    assert m.stopped_by == "qmp-quit"
    steps = [s["step"] for s in m.shutdown_steps]
    assert steps[0] == "poweroff" and "qmp-quit" in steps  # poweroff over SSH cannot work here, then QMP quit does


def test_stubborn_qemu_ends_with_sigkill(machine):
    m = machine("stubborn")
    m.launch()
    m.shutdown(timeout=1)
    assert not m.alive() and m.stopped_by == "sigkill"
    assert [s["step"] for s in m.shutdown_steps][-3:] == ["qmp-quit", "sigterm", "sigkill"]


def test_states_are_guarded(machine):
    m = machine("ready")
    assert m.state == State.CREATED
    with pytest.raises(LabError, match="cannot go from created to ready"):
        m.transition(State.READY)
    m.shutdown()  # never launched: nothing to do
    assert m.state == State.CREATED


def test_qmp_commands_after_launch(machine):
    m = machine("silent")
    m.launch()
    assert m.ssh_port == 9
    assert m.qmp_cmd("query-status") == {}
    m.shutdown(timeout=2)
    with pytest.raises(LabError, match="QMP is not connected"):
        m.qmp_cmd("query-status")


def test_launch_of_a_missing_binary(tmp_path):
    m = QemuMachine("vm", [str(tmp_path / "no-such-qemu")], tmp_path / "q", tmp_path / "c", tmp_path / "e", tmp_path / "k")
    with pytest.raises(BootError) as info:
        m.launch()
    assert info.value.phase == "qemu-exit" and "cannot start" in str(info.value)
    assert os.path.basename(info.value.evidence.argv[0]) == "no-such-qemu"


def test_boot_phases_tie_the_guest_clock_to_the_host_clock():
    from lab.machine import boot_phases

    record = {"events": {"qmp": 0.3, "ready-marker": 9.0, "connected": 10.2},
              "guest_stages": {"stage 1: init": 3.1, "stage 1: modules loaded": 4.0, "stage 1: root mounted": 5.0,
                               "stage 2": 5.2, "agent started": 5.3, "network up": 6.4, "drivers loaded": 7.1,
                               "ready": 7.5, "sshd started": 7.9}}
    phases = boot_phases(record, first_command=10.6)
    assert phases["QEMU start to QMP"] == 0.3
    assert phases["firmware and kernel load"] == 1.2  # 9.0 - 7.5 - 0.3
    assert phases["kernel to /init"] == 3.1 and phases["stage 1 modules"] == 0.9
    assert phases["stage 2 to agent"] == pytest.approx(0.1) and phases["stage 2 network"] == pytest.approx(1.1)
    assert phases["channel connect"] == 1.2 and phases["first command"] == 0.4
    assert list(phases)[:3] == ["QEMU start to QMP", "firmware and kernel load", "kernel to /init"]
    # Stages are taken in the order the guest reached them: no negative phase; sshd, started
    # beside the rest for people, is not on the way to the first command once it comes after ready.
    assert list(phases).index("stage 2 network") < list(phases).index("stage 2 drivers")
    assert "stage 2 to sshd" not in phases
    assert min(phases.values()) >= 0
    assert sum(v for k, v in phases.items()) == pytest.approx(10.6)


def test_the_emulator_fault_after_the_ready_marker():
    from lab.machine import emulator_fault_after_ready

    # A real console: a pin audit turning tracepoints off met the fault at 46 s, long after ready.
    text = (FAKE.parent / "consoles" / "stale-int3-after-ready.log").read_text()
    detail = emulator_fault_after_ready(text)
    assert detail and "ttwu_do_activate+0x93/0x1b0" in detail and "multi-threaded TCG" in detail
    assert classify_console(text) is None  # the boot itself was fine
    # An int3 still in the kernel's text, or any other oops after ready, is the kernel under test.
    assert emulator_fault_after_ready(text.replace("00 66 <90> 48", "00 cc <90> 48")) is None
    assert emulator_fault_after_ready(text.replace("Oops: int3", "Oops: general protection fault")) is None
    assert emulator_fault_after_ready(text.split("LAB-READY")[1]) is None  # never ready: the boot's business
