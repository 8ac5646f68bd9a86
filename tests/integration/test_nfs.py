"""NFS O_DIRECT between two VMs over TCP and soft-RoCE: the transport in use is proven from
/proc/mounts, the integrity matrix passes on both packaged kernels, an injected corruption fails."""

import pytest

from lab.scenarios import nfs


@pytest.mark.parametrize("kernel", ["debian:6.12", "debian:7.3"])
def test_nfs_dio_matrix_over_tcp_and_rdma(kernel):
    run_dir, results = nfs.run(nfs.Options(kernels=[kernel], transports=["tcp", "rdma"]))
    section = results["kernels"][kernel.replace(":", "-")]
    assert section["verdict"] == "PASS", section
    for transport in ("tcp", "rdma"):
        t = section["transports"][transport]
        assert f"proto={transport}" in t["mount"]
        assert t["cases"] == 44 and t["failed"] == []
        assert t["pins"].startswith(("not exercised", "balanced"))
    assert (run_dir.path / "junit.xml").exists()


def test_injected_corruption_is_reported_with_case_and_offset():
    _, results = nfs.run(nfs.Options(kernels=["debian:7.3"], transports=["tcp"], inject_corruption=True, only="size=sub-page"))
    t = results["kernels"]["debian-7.3"]["transports"]["tcp"]
    assert t["verdict"] == "FAIL"
    assert t["injected"] == {"file_offset": 17}
    assert t["failed"][0]["name"] == "align=page size=sub-page off=aligned"
    assert "file offset 17" in t["failed"][0]["error"]


def test_nfs_p2p_is_refused_on_73_and_not_applicable_on_612():
    _, results = nfs.run_p2p(nfs.Options(kernels=["debian:6.12", "debian:7.3"], transports=["tcp", "rdma"]))
    assert results["kernels"]["debian-6.12"]["verdict"] == "N/A"
    new = results["kernels"]["debian-7.3"]
    assert new["verdict"] == "PASS", new
    for transport in ("tcp", "rdma"):
        t = new["transports"][transport]
        assert t["result"]["write"]["errno"] == "EREMOTEIO" and t["result"]["read"]["errno"] == "EREMOTEIO"
        assert not t["nfs_p2p_support"] and "no NFS P2P support" in t["reason"]


@pytest.mark.parametrize("version", ["3", "4.1"])
def test_other_nfs_versions_mount_and_verify(version):
    _, results = nfs.run(nfs.Options(kernels=["debian:7.3"], transports=["tcp", "rdma"], version=version, only="size=sub-page"))
    section = results["kernels"]["debian-7.3"]
    assert section["verdict"] == "PASS", section
    for transport in ("tcp", "rdma"):
        mount = section["transports"][transport]["mount"]
        assert f"vers={version}" in mount and f"proto={transport}" in mount, mount


def test_fstests_runner_in_the_pair_with_the_fake_tree():
    """The runner end to end: the tree is copied in, check runs against TEST_DEV mounted over each
    transport; the fake 001 does O_DIRECT on the NFS mount and passes, 002 fails, 003 does not run."""
    from pathlib import Path

    from lab.scenarios import fstests

    fake = Path(__file__).resolve().parent.parent / "fixtures" / "fstests-fake"
    tests = ["generic/001", "generic/002", "generic/003"]
    options = fstests.Options(fstests=str(fake), tests=tests, kernels=["debian:7.3"], transports=["tcp", "rdma"], timeout=600)
    run_dir, results = fstests.run(options)
    section = results["kernels"]["debian-7.3"]
    if section["verdict"] == "ERROR":
        # Once seen in CI: the pair's set-up hit an SSH banner timeout under load (no transport ran).
        # One more attempt; a second ERROR fails with its reason.
        run_dir, results = fstests.run(options)
        section = results["kernels"]["debian-7.3"]
    assert section["verdict"] != "ERROR", section["reason"]
    for transport in ("tcp", "rdma"):
        t = section["transports"][transport]
        assert f"proto={transport}" in t["mount"]
        assert t["statuses"] == {"generic/001": "pass", "generic/002": "fail", "generic/003": "notrun"}, t
        assert t["source"] == "xunit"
        assert (run_dir.path / f"kernels/debian-7.3/{transport}/check.out").exists()
    assert section["verdict"] == "FAIL"  # 002 fails on purpose
    table = (run_dir.path / "summary.txt").read_text()
    assert "tcp: 1 pass, 1 fail, 1 notrun" in table and "rdma: 1 pass, 1 fail, 1 notrun" in table
