"""Boot every shipped topology with both packaged kernels and check in the guest what the
topology promised. The labs come from the lab's pytest plugin (lab_boot), shared across tests."""

import json

import pytest

from lab import inspect
from lab.units import file_sha256
from lab.lab import Lab

from .conftest import KERNELS


def _expect(lab: Lab) -> None:
    topo = lab.rendered.topology
    for name, machine in topo.machines.items():
        guest = lab.guest(name)
        facts = inspect.gather(guest)
        assert facts["kernel"] == lab.kernels[name].release
        # Namespaces: PI type, metadata size and the block layer's integrity profile.
        expected = [ns for c in machine.nvme for ns in c.namespaces]
        seen = list(facts["namespaces"].values())
        assert len(seen) == len(expected), facts["namespaces"]
        for ns in expected:
            match = [s for s in seen if s["lba"] == ns.lba and s.get("ms") == ns.ms and s.get("pi_type") == ns.pi]
            assert match, f"{name}: no namespace with lba {ns.lba}, ms {ns.ms}, pi {ns.pi} in {seen}"
            if ns.pi:
                assert match[0]["integrity_format"] == ns.integrity_format
        # CMB: published as P2P memory only where the kernel has PCI_P2PDMA.
        cmb_ctrls = [c for c in machine.nvme if c.cmb_size_mb]
        has_p2pdma = lab.kernels[name].config_value("PCI_P2PDMA") == "y"
        p2p = [d for d in facts["p2pmem"].values() if "size" in d]
        if has_p2pdma:
            assert len(p2p) == len(cmb_ctrls)
            for d in p2p:
                assert d["published"] and d["size"] == 64 << 20
        else:
            assert p2p == []
            assert any("failed to register the CMB" in m for m in facts["cmb_messages"]), facts["cmb_messages"]
        # Private links: the peer answers, rxe is active where asked.
        for nic in machine.nics:
            peer = next(n for m, mm in topo.machines.items() if m != name for n in mm.nics if n.link == nic.link)
            assert inspect.ping(guest, peer.address)
            if nic.rdma != "none":
                assert any(link["netdev"] == nic.link and link["state"] == "ACTIVE" for link in facts["rdma"]), facts["rdma"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("topology", ["nvme-pi", "nfs-rdma-pair", "p2p-switch"])
def test_topology_boots_with_promised_hardware(lab_boot, topology, kernel):
    lab = lab_boot(topology, kernel=kernel)
    _expect(lab)
    # Every boot's phases are in the manifest: host-side events and the guest's own stage times.
    boots = lab.run.manifest()["boots"]
    first = next(iter(boots[-1]["machines"].values()))
    assert {"launched", "qmp", "console", "ready-marker", "connected"} <= set(first["events"])
    assert "ready" in first["guest_stages"]


@pytest.mark.lab(topology="nvme-pi", params={"pi": 3, "pif": 2})
def test_pi_type3_with_64bit_guard(guest):
    facts = inspect.gather(guest)
    ns = facts["namespaces"]["nvme0n1"]
    assert ns["pi_type"] == 3 and ns["ms"] == 16
    assert ns["integrity_format"] == "EXT-DIF-TYPE3-CRC64"


def test_base_image_is_never_written(lab_boot):
    lab = lab_boot("nvme-pi", kernel="debian:7.3", fresh=True)
    image = next(iter(lab.images.values()))
    lab.guest("vm").run("dd if=/dev/urandom of=/root/scratch bs=1M count=8 && sync", timeout=120, check=True)
    lab.stop()
    assert file_sha256(image.path) == image.meta["sha256"]


def test_the_image_is_keyed_by_the_debian_versions_it_installed(lab_boot):
    """apt's simulation of the recipe predicts what mmdebstrap installed, package for package, and
    a run's manifest carries those versions."""
    from lab.image_versions import resolve
    from lab.images import image_key

    lab = lab_boot("nvme-pi", kernel="debian:7.3")
    image = next(iter(lab.images.values()))
    resolved = resolve(image.recipe)
    assert len(image.versions) > 200 and image.meta["resolution_differs"] == []
    if image.meta["resolved_at"] == resolved.resolved_at:
        assert resolved.versions == image.versions and image.key == image_key(image.recipe, resolved)
    manifest = json.loads((lab.run.path / "manifest.json").read_text())
    recorded = next(iter(manifest["images"].values()))
    assert recorded["key"] == image.key and recorded["packages"] == image.versions
