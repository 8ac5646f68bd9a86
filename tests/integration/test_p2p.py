"""P2P on the packaged kernels: pre-flight and p2p-block with data verification behind a switch,
the refusal through a non-whitelisted host bridge (EINVAL and the kernel's line), a transfer that
never happened caught by the poisoned destination, and 'not applicable' without PCI_P2PDMA."""

from lab.scenarios import framework
from lab.scenarios.options import validate


def run(**options):
    cls = framework.get("p2p-block")
    return framework.run(cls, validate(cls.Options, options))


def test_p2p_block_on_73_switch_works_root_ports_refuse():
    outcome = run(kernels=["debian:7.3"], placements=["switch", "root-port"], size=256)
    switch, rootport = outcome.results["subruns"]["debian-7.3-switch"], outcome.results["subruns"]["debian-7.3-root-port"]
    assert switch["verdict"] == "PASS" and rootport["verdict"] == "PASS"
    for case in ("read-into-p2p", "write-from-p2p"):
        moved = switch["cases"][f"other-device/{case}"]
        assert moved["expected_behaviour"] == "works" and moved["result"]["ok"] and moved["result"]["difference"] is None
        refused = rootport["cases"][f"other-device/{case}"]
        assert refused["expected_behaviour"] == "refused" and refused["result"]["errno"] == "EINVAL"
        assert "cannot be used for peer-to-peer DMA" in refused["reason"]
        assert rootport["cases"][f"same-device/{case}"]["result"]["ok"]
    assert any("reachable (common upstream bridge" in line for line in switch["preflight"])
    assert (outcome.run_dir.path / "subruns/debian-7.3-switch/preflight.json").exists()
    assert outcome.ok and outcome.signature() == "switch=PASS, root-port=PASS"


def test_a_transfer_that_did_nothing_fails():
    outcome = run(kernels=["debian:7.3"], placements=["switch"], size=64, fault="skip-transfer")
    section = outcome.results["subruns"]["debian-7.3-switch"]
    assert section["verdict"] == "FAIL" and not outcome.ok
    for name in ("same-device/read-into-p2p", "other-device/write-from-p2p"):
        assert "nothing was transferred" in section["cases"][name]["reason"]


def test_p2p_not_applicable_without_p2pdma():
    outcome = run(kernels=["debian:6.12"], placements=["switch"])
    r = outcome.results["subruns"]["debian-6.12-switch"]
    assert r["verdict"] == "N/A" and "no PCI_P2PDMA" in r["reason"]
    assert r["cases"] == {} and outcome.ok
