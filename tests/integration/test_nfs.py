"""NFS O_DIRECT between two VMs over TCP and soft-RoCE: the transport in use is proven from
/proc/mounts, the integrity matrix passes on both packaged kernels (read back by the client and
checksummed by the server), an injected corruption fails; nfs-p2p's refusal is asserted by its
errno and fails when the buffer is not P2P memory at all."""

import pytest

from lab.scenarios import framework
from lab.scenarios.options import validate


def run(name, **options):
    cls = framework.get(name)
    return framework.run(cls, validate(cls.Options, options))


@pytest.mark.parametrize("kernel", ["debian:6.12", "debian:7.3"])
def test_nfs_dio_matrix_over_tcp_and_rdma(kernel):
    outcome = run("nfs-dio", kernels=[kernel], transports=["tcp", "rdma"])
    section = outcome.results["subruns"][kernel.replace(":", "-")]
    assert section["verdict"] == "PASS", section
    for transport in ("tcp", "rdma"):
        t = section["cases"][transport]
        assert f"proto={transport}" in t["mount"]
        assert t["cases"] == 44 and t["failed"] == [] and t["server_checksum_differs"] == []
        assert t["pins"].startswith(("not exercised", "balanced"))
    assert (outcome.run_dir.path / "junit.xml").exists()


def test_injected_corruption_is_reported_with_case_and_offset():
    outcome = run("nfs-dio", kernels=["debian:7.3"], transports=["tcp"], inject_corruption=True, only="size=sub-page")
    t = outcome.results["subruns"]["debian-7.3"]["cases"]["tcp"]
    assert t["verdict"] == "FAIL" and not outcome.ok
    assert t["injected"] == {"file_offset": 17}
    assert t["failed"][0]["name"] == "align=page size=sub-page off=aligned"
    assert "file offset 17" in t["failed"][0]["error"]
    # The server's own checksum of the written bytes is the second witness.
    assert t["server_checksum_differs"] == ["align=page size=sub-page off=aligned"]


def test_nfs_p2p_is_refused_on_73_and_not_applicable_on_612():
    outcome = run("nfs-p2p", kernels=["debian:6.12", "debian:7.3"], transports=["tcp", "rdma"])
    old = outcome.results["subruns"]["debian-6.12"]
    assert old["verdict"] == "N/A" and "no PCI_P2PDMA" in old["reason"]
    new = outcome.results["subruns"]["debian-7.3"]
    assert new["verdict"] == "PASS", new
    for transport in ("tcp", "rdma"):
        t = new["cases"][transport]
        assert t["result"]["write"]["errno"] == "EREMOTEIO" and t["result"]["read"]["errno"] == "EREMOTEIO"
        assert not t["nfs_p2p_support"] and "no NFS P2P support" in t["reason"]
    assert outcome.ok


def test_nfs_p2p_fails_when_the_buffer_is_not_p2p_memory():
    outcome = run("nfs-p2p", kernels=["debian:7.3"], transports=["rdma"], fault="ordinary-memory")
    t = outcome.results["subruns"]["debian-7.3"]["cases"]["rdma"]
    assert t["verdict"] == "FAIL" and "write and read succeeded" in t["reason"]
    assert not outcome.ok


@pytest.mark.parametrize("version", ["3", "4.1"])
def test_other_nfs_versions_mount_and_verify(version):
    outcome = run("nfs-dio", kernels=["debian:7.3"], transports=["tcp", "rdma"], nfs_version=version, only="size=sub-page")
    section = outcome.results["subruns"]["debian-7.3"]
    assert section["verdict"] == "PASS", section
    for transport in ("tcp", "rdma"):
        mount = section["cases"][transport]["mount"]
        assert f"vers={version}" in mount and f"proto={transport}" in mount, mount


def test_fstests_runner_in_the_pair_with_the_fake_tree(tmp_path):
    """The runner end to end: the tree is copied in, check runs against TEST_DEV mounted over each
    transport; the fake 001 does O_DIRECT on the NFS mount and passes, 002 fails and is a known issue,
    003 does not run, 004 fails once and passes when run again (a flake), 005 fails every time and
    nothing knows it (a regression), 006 hangs and is killed by the per-test timeout. The tree is the
    fake's source, built by the lab in the guest image's build root."""
    from pathlib import Path

    fake = Path(__file__).resolve().parent.parent / "fixtures" / "fstests-fake"
    known = tmp_path / "known-issues.toml"
    known.write_text('[[expect]]\ntest = "generic/002"\nverdict = "FAIL"\nwhy = "fails on purpose"\n'
                     'link = "https://example.org/fake-002"\n')
    tests = ["generic/001", "generic/002", "generic/003", "generic/004", "generic/005", "generic/006"]
    outcome = run("nfs-fstests", fstests=str(fake), test=tests, kernels=["debian:7.3"], transports=["tcp", "rdma"],
                  timeout=900, test_timeout=20, known_issues=[str(known)])
    section = outcome.results["subruns"]["debian-7.3"]
    assert section["verdict"] == "FAIL", section["reason"]
    assert section["outcome"] == "unexpected failure (regression)"  # 005 and the hung 006
    assert section["tree"]["buildroot"] == "lab-trixie-build" and section["tree"]["source_key"].startswith("content-")
    for transport in ("tcp", "rdma"):
        t = section["transports"][transport]
        assert f"proto={transport}" in t["mount"]
        assert t["statuses"] == {"generic/001": "pass", "generic/002": "fail", "generic/003": "notrun",
                                 "generic/004": "fail", "generic/005": "fail", "generic/006": "timeout"}, t
        assert t["classes"] == {"generic/001": "pass", "generic/002": "known failure", "generic/003": "notrun",
                                "generic/004": "flaky", "generic/005": "new failure", "generic/006": "timed out"}, t
        assert t["timed_out"]["generic/006"] >= 20
        assert t["rerun"] == {"generic/004": "pass", "generic/005": "fail"}, t
        assert t["source"] == "xunit"
        cases = section["cases"]
        assert cases[f"generic/003 ({transport})"]["verdict"] == "N/A"
        assert cases[f"generic/002 ({transport})"]["outcome"] == "as expected"
        assert "https://example.org/fake-002" in cases[f"generic/002 ({transport})"]["reason"]
        assert cases[f"generic/004 ({transport})"]["verdict"] == "FLAKY"  # not a PASS: it failed once
        assert cases[f"generic/004 ({transport})"]["outcome"] == "flaky"
        assert "flaky" in cases[f"generic/004 ({transport})"]["reason"]
        assert cases[f"generic/005 ({transport})"]["outcome"] == "unexpected failure (regression)"
        assert cases[f"generic/006 ({transport})"]["verdict"] == "FAIL"
        assert "timed out" in cases[f"generic/006 ({transport})"]["reason"]
        assert (outcome.run_dir.path / f"subruns/debian-7.3/{transport}/check.out").exists()
        assert (outcome.run_dir.path / f"subruns/debian-7.3/{transport}/rerun1.out").exists()
    table = (outcome.run_dir.path / "summary.txt").read_text()
    assert "known failure" in table and "new failure" in table and "flaky" in table
    assert "tcp: 1 pass, 3 fail, 1 notrun, 1 timed out" in table
    junit = (outcome.run_dir.path / "junit.xml").read_text()
    assert junit.count("<flakyFailure") == 2 and junit.count("<rerunFailure") == 2  # 004 and 005, per transport


def test_local_fstests_section_on_the_pi_namespaces():
    """fstests' xfs section on nvme-pi: TEST_DEV and SCRATCH_DEV are the two PI namespaces, the fake
    007 does O_DIRECT on the XFS mount and checks both devices carry PI; 003 does not run."""
    from pathlib import Path

    fake = Path(__file__).resolve().parent.parent / "fixtures" / "fstests-fake"
    outcome = run("fstests", fstests=str(fake), test=["generic/007", "generic/003"], kernels=["debian:7.3"],
                  sections=["xfs", "ext4"], timeout=600)
    section = outcome.results["subruns"]["debian-7.3"]
    assert section["verdict"] == "PASS", section["reason"]
    assert "T10-DIF-TYPE1-CRC" in section["devices"] and "SCRATCH_DEV /dev/nvme0n2" in section["devices"]
    for fs in ("xfs", "ext4"):
        run_ = section["sections"][fs]
        assert f"FSTYP={fs}" in run_["config"]
        assert run_["classes"] == {"generic/007": "pass", "generic/003": "notrun"}, run_
