"""Fault and pin-audit logic without guests: where a block's PI lives in QEMU's backing file, the
corruption itself on a file, what the pin audit reads from hist triggers and how it judges a row."""

from __future__ import annotations

import pytest

from lab import faults
from lab.errors import UsageError
from lab.scenarios import kprobes, pin_audit
from lab.topology.model import Namespace


def test_pi_location_follows_qemus_layout():
    ns = Namespace(size=1 << 30, lba=4096, ms=8, pi=1)
    nlbas = (1 << 30) // (4096 + 8)
    # Data first, then 8 bytes of metadata per block; the tuple is the whole 8 bytes.
    assert faults.pi_location(ns, 0, "guard") == (nlbas * 4096, 2)
    assert faults.pi_location(ns, 5, "app") == (nlbas * 4096 + 5 * 8 + 2, 2)
    assert faults.pi_location(ns, 5, "ref") == (nlbas * 4096 + 5 * 8 + 4, 4)
    wide = Namespace(size=1 << 30, lba=4096, ms=16, pi=3, pif=2)
    n = (1 << 30) // (4096 + 16)
    assert faults.pi_location(wide, 1, "guard") == (n * 4096 + 16, 8)
    assert faults.pi_location(wide, 1, "ref") == (n * 4096 + 16 + 10, 6)
    # With more metadata than PI, the tuple is its last bytes unless pil=1.
    big = Namespace(size=1 << 30, lba=512, ms=64, pi=1)
    m = (1 << 30) // (512 + 64)
    assert faults.pi_location(big, 0, "guard") == (m * 512 + 56, 2)
    assert faults.pi_location(Namespace(size=1 << 30, lba=512, ms=64, pi=1, pil=1), 0, "guard") == (m * 512, 2)
    with pytest.raises(UsageError, match="no protection information"):
        faults.pi_location(Namespace(), 0, "guard")
    with pytest.raises(UsageError, match="outside the namespace"):
        faults.pi_location(ns, nlbas, "guard")


def test_corrupt_pi_flips_the_field_in_the_file(tmp_path):
    ns = Namespace(size=1 << 20, lba=4096, ms=8, pi=1)
    image = tmp_path / "ns.img"
    image.write_bytes(bytes(1 << 20))
    record = faults.corrupt_pi(image, ns, 3, "ref")
    offset, length = faults.pi_location(ns, 3, "ref")
    data = image.read_bytes()
    assert data[offset:offset + length] == b"\xff" * 4 and data.count(b"\xff") == 4
    assert record == {"lba": 3, "field": "ref", "offset": offset, "before": "00000000", "after": "ffffffff"}


TRACE = """# tracer: nop
#
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
              dio_mutate-229     [001] .....    12.955315: pin: (pin_user_pages_fast+0x4/0x60)
              dio_mutate-229     [001] .....    12.963938: pin: (pin_user_pages_fast+0x4/0x60)
              dio_mutate-229     [000] .....    12.965647: get: (get_user_pages_fast+0x4/0x60)
"""


def test_pin_audit_reads_and_judges():
    assert kprobes.trace_counts(TRACE, ["pin", "get"]) == {"pin": 2, "get": 1}
    assert kprobes.trace_counts("", ["pin"]) == {"pin": 0}
    assert pin_audit.mechanism(10, 0) == "pins" and pin_audit.mechanism(0, 7) == "references"
    assert pin_audit.mechanism(3, 4) == "both" and pin_audit.mechanism(0, 0) == "none"
    balanced = {"acquired": 100, "released": 100}
    assert pin_audit.judge("xfs-pi", balanced, 0, 50, True)[0] == "PASS"
    verdict, reason = pin_audit.judge("nfs-tcp", {"acquired": 100, "released": 90}, 0, 50, False)
    assert verdict == "FAIL" and "10 still held" in reason
    assert pin_audit.judge("9p", {"acquired": 0, "released": 0}, 0, 50, True)[0] == "ERROR"
    assert pin_audit.judge("9p", {"acquired": 0, "released": 0}, 0, 0, True) == ("ERROR", "no I/O was done")


def test_pin_counters_parsed_from_vmstat_lines():
    from lab.scenarios.nfs import SETTLED_PINS_SCRIPT, parse_pins

    assert parse_pins("nr_foll_pin_acquired 12\nnr_foll_pin_released 10\n\ngarbage\n") == {
        "nr_foll_pin_acquired": 12, "nr_foll_pin_released": 10}
    assert "grep -E '^nr_foll_pin_(acquired|released) ' /proc/vmstat" in SETTLED_PINS_SCRIPT
