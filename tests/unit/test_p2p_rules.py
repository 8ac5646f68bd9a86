"""The lab's reading of the kernel's P2P distance rules, on PCIe layouts like QEMU's."""

from lab.scenarios.p2p import host_bridge_whitelisted, predict
from lab.scenarios.p2p_block import judge_case

QEMU_CPU = {"vendor": "AuthenticAMD", "family": 0xF}
EPYC = {"vendor": "AuthenticAMD", "family": 0x17}
Q35 = {"vendor": "0x8086", "device": "0x29c0"}


def ctrl(path, acs=None):
    return {"bdf": path[-1], "path": path, "acs_redirect": acs or {}}


SW_A = ctrl(["0000:00:02.0", "0000:01:00.0", "0000:02:00.0", "0000:03:00.0"])
SW_B = ctrl(["0000:00:02.0", "0000:01:00.0", "0000:02:01.0", "0000:04:00.0"])
RP_A = ctrl(["0000:00:03.0", "0000:05:00.0"])
RP_B = ctrl(["0000:00:04.0", "0000:06:00.0"])


def test_same_device_always_works():
    assert predict(RP_A, RP_A, QEMU_CPU, Q35) == (True, "same device")


def test_behind_one_switch_works():
    ok, why = predict(SW_A, SW_B, QEMU_CPU, Q35)
    assert ok and "0000:01:00.0" in why


def test_root_ports_need_a_whitelisted_host_bridge():
    ok, why = predict(RP_A, RP_B, QEMU_CPU, Q35)
    assert not ok and "not whitelisted" in why and "0xf" in why
    assert predict(RP_A, RP_B, EPYC, Q35)[0]


def test_acs_redirect_sends_switch_traffic_to_the_host_bridge():
    a = ctrl(SW_A["path"], {"0000:02:00.0": True})
    ok, why = predict(a, SW_B, QEMU_CPU, Q35)
    assert not ok and "ACS redirect on 0000:02:00.0" in why


def test_only_amd_family_17h_host_bridges_are_whitelisted_for_p2p():
    assert not host_bridge_whitelisted(QEMU_CPU, Q35)
    assert host_bridge_whitelisted(EPYC, Q35)
    assert not host_bridge_whitelisted({"vendor": "GenuineIntel", "family": 6}, Q35)


def test_p2p_cases_fail_on_corruption_and_error_when_nothing_moved():
    moved = {"ok": True, "bytes": 4096, "errno": None, "difference": None}
    corrupt = {"ok": True, "bytes": 4096, "errno": None, "difference": {"offset": 17, "got": 0, "want": 8}}
    nothing_moved = {"ok": True, "bytes": 4096, "errno": None, "difference": {"offset": 0, "got": 0x5A, "want": 8, "poison": True}}
    refused = {"ok": False, "bytes": 0, "errno": "EINVAL", "message": "Invalid argument"}
    assert judge_case("read-into-p2p", moved, True, False)[0] == "PASS"
    assert judge_case("read-into-p2p", corrupt, True, False)[0] == "FAIL"
    verdict, reason = judge_case("read-into-p2p", nothing_moved, True, False)
    assert verdict == "FAIL" and "nothing was transferred" in reason
    assert judge_case("read-into-p2p", refused, True, True)[0] == "FAIL"
    assert judge_case("write-from-p2p", moved, False, True)[0] == "FAIL"
    assert judge_case("mixed-memory", refused, True, True)[0] == "INFO"
    assert judge_case("mixed-memory", moved, True, True)[0] == "INFO"
    assert judge_case("mixed-memory", corrupt, True, True)[0] == "FAIL"  # wrong data is a failure wherever it happens


def test_refusal_is_asserted_by_errno_and_kernel_message():
    refused = {"ok": False, "bytes": 0, "errno": "EINVAL", "message": "Invalid argument"}
    verdict, reason = judge_case("read-into-p2p", refused, False, True)
    assert verdict == "PASS" and "EINVAL" in reason and "cannot be used for peer-to-peer DMA" in reason
    # The right errno without the kernel's line is not the refusal the rules predict.
    verdict, reason = judge_case("read-into-p2p", refused, False, False)
    assert verdict == "FAIL" and "did not log" in reason
    # Any other errno is a failure, even with the line in the log.
    for errno in ("EIO", "EREMOTEIO", "EFAULT"):
        other = dict(refused, errno=errno)
        verdict, reason = judge_case("write-from-p2p", other, False, True)
        assert verdict == "FAIL" and errno in reason and "EINVAL" in reason


def test_nfs_p2p_refusal_is_eremoteio_only():
    from lab.scenarios.nfs_p2p import judge, why_refused

    assert "no NFS P2P support" in why_refused(False, "tcp")
    assert "virtual DMA" in why_refused(True, "rdma")
    assert "TCP" in why_refused(True, "tcp")
    refused = {"ok": False, "errno": "EREMOTEIO"}
    assert judge({"write": refused, "read": refused}, "x")[0] == "PASS"
    verdict, reason = judge({"write": refused, "read": dict(refused, errno="EINVAL")}, "x")
    assert verdict == "FAIL" and "read EINVAL" in reason and "EREMOTEIO" in reason
    ok = {"ok": True, "data_matches": True}
    verdict, reason = judge({"write": ok, "read": refused}, "x")
    assert verdict == "FAIL" and "write succeeded" in reason
    wrong = {"ok": True, "data_matches": False}
    assert judge({"write": refused, "read": wrong}, "x") == ("FAIL", "read moved wrong data")
