"""P2P on the packaged kernels: pre-flight and p2p-block with data verification behind a switch,
the refusal through a non-whitelisted host bridge, and 'not applicable' without PCI_P2PDMA."""

from lab.scenarios import p2p


def test_p2p_block_on_73_switch_works_root_ports_refuse():
    run_dir, results = p2p.run(p2p.Options(kernels=["debian:7.3"], placements=["switch", "root-port"], size=256 << 10))
    switch, rootport = results["runs"]["debian-7.3-switch"], results["runs"]["debian-7.3-root-port"]
    assert switch["verdict"] == "PASS" and rootport["verdict"] == "PASS"
    for case in ("read-into-p2p", "write-from-p2p"):
        moved = switch["cases"][f"other-device/{case}"]
        assert moved["expected"] == "works" and moved["result"]["ok"] and moved["result"]["difference"] is None
        refused = rootport["cases"][f"other-device/{case}"]
        assert refused["expected"] == "refused" and refused["result"]["errno"] == "EINVAL"
        assert rootport["cases"][f"same-device/{case}"]["result"]["ok"]
    assert any("peer-to-peer" in m for m in rootport["cases"]["other-device/read-into-p2p"]["kernel_messages"])
    assert any("reachable (common upstream bridge" in l for l in switch["preflight"])
    assert (run_dir.path / "kernels/debian-7.3-switch/preflight.json").exists()
    assert p2p.all_ok(results)


def test_p2p_not_applicable_without_p2pdma():
    _, results = p2p.run(p2p.Options(kernels=["debian:6.12"], placements=["switch"]))
    r = results["runs"]["debian-6.12-switch"]
    assert r["verdict"] == p2p.NOT_APPLICABLE and "no PCI_P2PDMA" in r["reason"]
    assert r["cases"] == {}
