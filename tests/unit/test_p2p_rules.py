"""The lab's reading of the kernel's P2P distance rules, on PCIe layouts like QEMU's."""

from lab.scenarios.p2p import _judge_case, host_bridge_whitelisted, predict

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


def test_whitelist():
    assert not host_bridge_whitelisted(QEMU_CPU, Q35)
    assert host_bridge_whitelisted(EPYC, Q35)
    assert not host_bridge_whitelisted({"vendor": "GenuineIntel", "family": 6}, Q35)


def test_case_judgement():
    moved = {"ok": True, "bytes": 4096, "errno": None, "difference": None}
    corrupt = {"ok": True, "bytes": 4096, "errno": None, "difference": {"offset": 17, "got": 0, "want": 8}}
    refused = {"ok": False, "bytes": 0, "errno": "EINVAL", "message": "Invalid argument"}
    assert _judge_case("read-into-p2p", moved, True)[0] == "PASS"
    assert _judge_case("read-into-p2p", corrupt, True)[0] == "FAIL"
    assert _judge_case("read-into-p2p", refused, True)[0] == "FAIL"
    assert _judge_case("read-into-p2p", refused, False) == ("PASS", "refused as expected with EINVAL")
    assert _judge_case("write-from-p2p", moved, False)[0] == "FAIL"
    assert _judge_case("mixed-memory", refused, True)[0] == "RECORDED"
    assert _judge_case("mixed-memory", corrupt, True)[0] == "FAIL"


def test_nfs_p2p_expectations_name_the_case():
    from lab.scenarios.nfs import expected_p2p

    assert "EREMOTEIO" in expected_p2p(False, "tcp")
    assert "virtual DMA" in expected_p2p(True, "rdma")
    assert "TCP" in expected_p2p(True, "tcp")
