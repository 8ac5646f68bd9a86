"""netfs-dio on 9p and cifs over TCP, the pin audit, and each fault once, on debian:7.3 in real
guests; and every one of them made to fail where it should."""

from __future__ import annotations

import json

from lab.scenarios import framework
from lab.scenarios.options import validate


def run(name: str, **options):
    cls = framework.get(name)
    return framework.run(cls, validate(cls.Options, {"kernels": ["debian:7.3"], **options}))


def test_netfs_dio_on_9p_and_cifs_and_corruption_on_each():
    outcome = run("netfs-dio", fs=["9p", "cifs"], only="off=unaligned")
    section = outcome.results["subruns"]["debian-7.3"]
    assert section["verdict"] == "PASS", section["reason"]
    for fs, transport in (("9p", "virtio"), ("cifs", "tcp")):
        for mode in ("direct", "buffered"):
            case = section["cases"][f"{fs}-{transport}-{mode}"]
            assert case["verdict"] == "PASS" and case["cases"] == 22 and case["witness_differs"] == [], case
        assert ("trans=virtio" if fs == "9p" else "vers=3.1.1") in section["cases"][f"{fs}-{transport}-direct"]["mount"]
    # The host kept the 9p share's file in the run directory.
    assert list(outcome.run_dir.path.glob("subruns/debian-7.3/shares/client/lab9p/netfs-dio.dat"))
    bad = run("netfs-dio", fs=["9p", "cifs"], modes=["direct"], only="size=sub-page", inject_corruption=True)
    cases = bad.results["subruns"]["debian-7.3"]["cases"]
    for name in ("9p-virtio-direct", "cifs-tcp-direct"):
        assert cases[name]["verdict"] == "FAIL" and "file offset 17" in cases[name]["failed"][0]["error"], cases[name]
        assert cases[name]["witness_differs"], cases[name]


def test_pin_audit_on_73():
    outcome = run("pin-audit")
    section = outcome.results["subruns"]["debian-7.3"]
    cases = section["cases"]
    assert section["verdict"] == "PASS", section["reason"]
    for row in ("xfs-pi", "ext4-nopi", "raw-pi", "nfs-tcp", "nfs-rdma", "9p", "cifs-tcp"):
        assert cases[row]["verdict"] == "PASS" and cases[row]["pins"]["acquired"] == cases[row]["pins"]["released"], row
    assert cases["xfs-pi"]["mechanism"] == "pins" and cases["nfs-tcp"]["mechanism"] == "references"
    assert not any(c.get("mechanism_changed") for c in cases.values()), {r: c["mechanism"] for r, c in cases.items()}
    assert "CHANGED" not in outcome.table


def test_each_fault_once():
    outcome = run("faults", kinds=["pi", "remove", "stop", "link"], down=5)
    subruns = outcome.results["subruns"]
    pi = subruns["debian-7.3-pi"]["cases"]["pi-guard"]
    assert pi["verdict"] == "PASS" and "EILSEQ" in pi["reason"], pi
    removed = subruns["debian-7.3-remove"]["cases"]["remove-during-dio"]
    assert removed["verdict"] == "PASS" and removed["noticed_seconds"] is not None, removed
    assert removed["errnos"] and set(removed["errnos"]) <= {"5", "6", "19", "28"}, removed  # EIO, ENXIO, ENODEV, ENOSPC
    stopped = subruns["debian-7.3-stop"]
    assert stopped["verdict"] == "ERROR" and "stopped answering" in stopped["reason"] and "'paused'" in stopped["reason"]
    status = json.loads((outcome.run_dir.path / "subruns/debian-7.3-stop/machines/vm/query-status.json").read_text())
    assert status["status"] == "paused"
    link = subruns["debian-7.3-link"]["cases"]["link-flap"]
    assert link["verdict"] == "PASS" and link["noticed_seconds"] is not None, link
    assert link["rpc_calls"]["end"] > link["rpc_calls"]["link_back"], link  # the I/O resumed after the link came back
    for label in subruns:
        assert subruns[label]["faults"], label  # every fault is recorded with its time
