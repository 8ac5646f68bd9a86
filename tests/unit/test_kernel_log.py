"""The one kernel-log detector: what each problem line of Debian's kernels reads as, how a window is
judged against a scenario's rules, and how the boot classifier and the emulator-fault retry use
it. The lines are copied from consoles of runs made here (6.12.117 and 7.3.4, nvme-pi, stable-pages,
fstests generic/761, p2p-block) and from the kernel's own printk formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import kernel_log
from lab.machine import READY_MARKER, classify_console, emulator_fault_after_ready, stale_int3

CONSOLES = Path(__file__).resolve().parent.parent / "fixtures" / "consoles"

LINES = [
    # Seen in this lab's runs: debian:6.12 stable-pages and repro (WRITE and READ guard errors), the
    # fault scenario's corrupted PI, an early-boot int3, a kernel without its root.
    ("[   21.402115] nvme0n1: I/O Cmd(0x1) @ LBA 24, 16 blocks, I/O Error (sct 0x2 / sc 0x82)", "pi_write"),
    ("[   23.118402] nvme0n1: guard tag error at sector 384 (rcvd 186a, want 348f)", "pi_read"),
    ("[   12.771203] nvme0n1: I/O Cmd(0x2) @ LBA 5, 1 blocks, I/O Error (sct 0x2 / sc 0x82)", "pi_read"),
    ("[    1.904417] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI", "oops"),
    ("[    2.512090] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)", "panic"),
    ("[   48.005921] Kernel panic - not syncing: Fatal exception in interrupt", "panic"),
    ("[   46.312145] Oops: int3: 0000 [#1] SMP NOPTI", "oops"),
    ("[   12.100000] BUG: unable to handle page fault for address: ffffc90000a3f000", "oops"),
    ("[   12.100000] Oops: general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1]", "oops"),
    ("[    9.874411] BUG: KASAN: slab-use-after-free in nfs_direct_write_completion+0x1d/0x2c0", "sanitizer"),
    ("[    9.874411] UBSAN: array-index-out-of-bounds in fs/iomap/direct-io.c:388:9", "sanitizer"),
    ("[    9.874411] BUG: KFENCE: out-of-bounds read in bio_integrity_prep+0x61/0x2b0", "sanitizer"),
    ("[   33.000000] kernel BUG at mm/gup.c:120!", "bug"),
    ("[   33.000000] BUG: sleeping function called from invalid context at block/blk-core.c:781", "bug"),
    ("[   20.551201] WARNING: CPU: 1 PID: 412 at fs/iomap/direct-io.c:624 __iomap_dio_rw+0x5b4/0x8d0", "warning"),
    ("[   20.551201] WARNING: possible circular locking dependency detected", "warning"),
    ("[  242.884411] INFO: task xfs_io:1234 blocked for more than 120 seconds.", "hung_task"),
    ("[   88.000000] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [fio:733]", "lockup"),
    ("[   88.000000] Watchdog detected hard LOCKUP on cpu 0", "lockup"),
    ("[  101.227733] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "rcu_stall"),
    ("[  101.227733] rcu: INFO: rcu_preempt self-detected stall on CPU", "rcu_stall"),
    ("[  101.227733] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:", "rcu_stall"),
    ("[   95.400012] nvme nvme1: I/O tag 17 (1011) opcode 0x2 (I/O Cmd) QID 2 timeout, aborting req_op:READ(0) size:4096", "nvme_timeout"),
    ("[   95.400012] nvme nvme1: Abort status: 0x0", "nvme_abort"),
    ("[   95.500000] nvme nvme1: resetting controller", "nvme_reset"),
    ("[   13.702118] nvme0n2: I/O Cmd(0x1) @ LBA 294, 1 blocks, I/O Error (sct 0x2 / sc 0x82)", "pi_write"),
    ("[   13.702130] protection error, dev nvme0n2, sector 2352 op 0x1:(WRITE) flags 0x8800 phys_seg 1 prio class 2", "pi_write"),
    ("[   13.900000] nvme0n1: I/O Cmd(0x2) @ LBA 512, 8 blocks, I/O Error (sct 0x2 / sc 0x82)", "pi_read"),
    ("[   13.900000] protection error, dev nvme0n1, sector 4096 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 2", "pi_read"),
    ("[   14.000000] nvme0n1: guard tag error at sector 8 (rcvd 1a2b, want 3c4d)", "pi_read"),
    ("[   14.000000] nvme0n1: I/O Cmd(0x2) @ LBA 0, 1 blocks, I/O ERROR (sct 0x0 / sc 0x4)", "nvme_status"),
    ("[   14.000000] critical medium error, dev nvme0n1, sector 8 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 2", "medium_error"),
    ("[   60.113000] I/O error, dev nvme1n1, sector 0 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 2", "io_error"),
]

CLEAN = [
    "[    0.000000] Command line: console=ttyS0 nvme_core.io_timeout=255 norandmaps cryptomgr.notests",
    "[    1.204000] nvme nvme0: pci function 0000:00:04.0",
    "[    1.300000] nvme nvme0: 2/0/0 default/read/poll queues",
    "[    1.310000] nvme nvme0: added peer-to-peer DMA memory",
    "[    1.320000] nvme nvme0: failed to register the CMB",
    "[    2.000000] random: crng init done",
    "lab-init: [11.07] ready",
    "[   20.000000] XFS (nvme0n1): Mounting V5 Filesystem 6f1c1d0e-1d6e-4b0e-9a2c-0b1d0e6f1c1d",
    "[   30.000000] run fstests generic/451 at 2026-12-02 04:10:31",
]


@pytest.mark.parametrize("line,kind", LINES)
def test_each_problem_line_reads_as_its_kind(line: str, kind: str) -> None:
    found = kernel_log.detect(line + "\n")
    assert [p.kind for p in found] == [kind]
    assert not found[0].line.startswith("[")  # the timestamp is not part of the line
    assert found[0].family == ("crash" if kind in kernel_log.CRASH else "device")


@pytest.mark.parametrize("line", CLEAN)
def test_ordinary_boot_and_run_lines_are_not_problems(line: str) -> None:
    assert kernel_log.detect(line + "\n") == []


def test_a_real_console_after_the_emulator_fault():
    text = (CONSOLES / "stale-int3-after-ready.log").read_text()
    kinds = [p.kind for p in kernel_log.detect(text)]
    assert kinds == ["oops", "panic"]


def test_a_problem_no_rule_explains_is_unexpected_and_rules_say_why():
    window = "\n".join(line for line, _ in LINES[24:29]) + "\n"
    expected = kernel_log.Rule(frozenset({"pi_write"}), "guard errors of a mutating run before 7.0")
    emulation = kernel_log.emulation_read_race("generic/451")
    judged = kernel_log.judge(kernel_log.detect(window), [expected, emulation])
    assert [p.kind for p in judged.unexpected] == ["nvme_reset"]
    assert judged.headline() == "kernel log: nvme_reset: nvme nvme1: resetting controller"
    out = judged.to_dict()
    assert out["expected"]["count"] == 2 and out["emulation"]["count"] == 2
    assert "two steps" in out["emulation"]["why"][0]
    assert kernel_log.judge(kernel_log.detect(window), []).headline().endswith("(+4 more)")


def test_a_suite_log_splits_at_the_lines_each_test_writes_to_kmsg():
    text = ("[ 1.0] run fstests generic/451 at 2026-12-02 04:10:31\n"
            "[ 2.0] protection error, dev nvme0n1, sector 4096 op 0x0:(READ) flags 0x0\n"
            "[ 3.0] run fstests generic/761 at 2026-12-02 04:11:02\n"
            "[ 4.0] protection error, dev nvme0n2, sector 2352 op 0x1:(WRITE) flags 0x8800\n")
    windows = kernel_log.split_by_marker(text, kernel_log.FSTESTS_MARKER)
    assert list(windows) == ["generic/451", "generic/761"]
    assert [p.kind for p in kernel_log.detect(windows["generic/451"])] == ["pi_read"]
    assert [p.kind for p in kernel_log.detect(windows["generic/761"])] == ["pi_write"]


# -- the boot classifier and the emulator-fault retry read the same detector -----------------------
STALE = ("[    1.90] Oops: int3: 0000 [#1] SMP NOPTI\n[    1.91] RIP: 0010:set_next_task_fair+0x609/0x780\n"
         "[    1.91] Code: 0f 84 42 01 00 00 48 0f 47 c2 eb 6d 0f <1f> 44 00 00 48 8b 3c 24\n"
         "[    1.91] Kernel panic - not syncing: Fatal exception in interrupt\n")


def test_an_int3_oops_after_another_kernel_problem_is_the_kernels_not_the_emulators():
    assert stale_int3(STALE) == "set_next_task_fair+0x609/0x780"
    kasan = "[    1.50] BUG: KASAN: slab-use-after-free in nvme_pci_complete_rq+0x1/0x2\n"
    assert stale_int3(kasan + STALE) is None
    assert classify_console(kasan + STALE)[0] == "panic"  # not retried as the emulator's
    text = (CONSOLES / "stale-int3-after-ready.log").read_text()
    assert emulator_fault_after_ready(text)
    warning = "[   20.551201] WARNING: CPU: 1 PID: 412 at fs/iomap/direct-io.c:624 __iomap_dio_rw+0x5b4/0x8d0\n"
    before, after = text.split(READY_MARKER, 1)
    assert emulator_fault_after_ready(before + READY_MARKER + warning + after) is None
    assert emulator_fault_after_ready(warning + before + READY_MARKER + after) is None  # earlier in the same boot


def test_the_int3_check_reads_only_its_own_oops():
    # A real int3 (cc before RIP) whose report ended, then a later oops with another Code line: the
    # later oops's code bytes do not make the first one the emulator's.
    real = ("[    1.90] Oops: int3: 0000 [#1] SMP NOPTI\n[    1.91] RIP: 0010:ext4_fill_super+0x10/0x200\n"
            "[    1.91] Code: 00 00 cc <1f> 44\n[    1.92] ---[ end trace 0000000000000000 ]---\n")
    later = ("[    2.10] Oops: general protection fault: 0000 [#2] SMP NOPTI\n"
             "[    2.11] Code: 0f 84 42 01 00 00 48 0f 47 c2 eb 6d 0f <1f> 44 00 00\n")
    assert stale_int3(real + later) is None
    no_code = "[    1.90] Oops: int3: 0000 [#1] SMP NOPTI\n[    1.91] RIP: 0010:ext4_fill_super+0x10/0x200\n"
    assert stale_int3(no_code + "[    1.92] ---[ end trace 0000000000000000 ]---\n" + later) is None


def test_a_panic_anywhere_wins_over_the_nvme_timeout_signature():
    timeout = "[   68.57] nvme nvme0: Identify Controller failed (-4)\nlab-init: [68.72] ready\nLAB-READY\n"
    assert classify_console(timeout)[0] == "nvme-timeout"
    panicked = timeout + "[   90.00] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n"
    phase, detail = classify_console(panicked)
    assert phase == "panic" and "Attempted to kill init" in detail


def test_what_the_debug_fragment_prints_is_a_crash_of_the_kernel():
    """The reports of kernel/fragments/debug.config's checks, as the kernel prints them."""
    from lab.kernel_log import detect

    lines = {
        "[   12.1] BUG: KASAN: slab-use-after-free in nfs_direct_write_reschedule+0x3c/0x1a0": "sanitizer",
        "[   12.1] BUG: KFENCE: out-of-bounds read in bio_iov_iter_get_pages+0x58/0x300": "sanitizer",
        "[   12.1] WARNING: possible circular locking dependency detected": "warning",
        "[   12.1] BUG: sleeping function called from invalid context at mm/gup.c:2150": "bug",
        "[   12.1] WARNING: CPU: 1 PID: 212 at kernel/dma/debug.c:1058 check_unmap+0x6f4/0x890": "warning",
        "[   12.1] kernel BUG at lib/list_debug.c:32!": "bug",
    }
    for line, kind in lines.items():
        found = detect(line + "\n")
        assert [p.kind for p in found] == [kind] and found[0].family == "crash", line
