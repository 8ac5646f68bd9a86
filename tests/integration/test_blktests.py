"""The blktests runner end to end in a real guest: the fake source built in the build root, the
config written from the topology (TEST_DEVS is the PI namespace, NVMET_TRTYPES per transport), a
device test on the PI namespace, a hung test killed, the target transports' modules loaded for real,
a failure known on one transport and new on the others, a test that does not run."""

from pathlib import Path

from lab.scenarios import framework
from lab.scenarios.options import validate

FAKE = Path(__file__).resolve().parent.parent / "fixtures" / "blktests-fake"


def test_blktests_runner_with_the_fake_tree(tmp_path):
    known = tmp_path / "known-issues.toml"
    known.write_text('[[expect]]\ntest = "nvme/002"\ntransport = "tcp"\nverdict = "FAIL"\nwhy = "fails on purpose over tcp"\n')
    cls = framework.get("blktests")
    options = validate(cls.Options, {"blktests": str(FAKE), "kernels": ["debian:7.3"], "test_timeout": 20,
                                     "test": ["block/001", "block/002", "nvme/001", "nvme/002", "nvme/003"],
                                     "transports": ["loop", "tcp", "rdma", "siw"], "known_issues": [str(known)]})
    outcome = framework.run(cls, options)
    section = outcome.results["subruns"]["debian-7.3"]
    # siw tested nothing (Debian's kernels lack it): the sub-run is ERROR, not the FAIL or PASS of its neighbours.
    assert section["verdict"] == "ERROR" and section["reason"].startswith("check (siw): nothing was tested over siw: all 3 "
                                                                          "test(s) were not run"), section["reason"]
    assert "CONFIG_RDMA_SIW" in section["reason"]
    assert section["tree"]["buildroot"] == "lab-trixie-build"
    assert section["test_dev"]["format"].startswith("T10-DIF-TYPE1-CRC 4096")
    runs = section["runs"]
    assert list(runs) == ["device", "loop", "tcp", "rdma", "siw"]
    assert runs["device"]["config"] == f"TEST_DEVS=({section['test_dev']['device']})\n"
    assert runs["device"]["classes"] == {"block/001": "pass", "block/002": "timed out"}, runs["device"]
    for transport in ("loop", "tcp", "rdma"):
        assert f"NVMET_TRTYPES={transport if transport != 'rdma' else 'rdma'}" in runs[transport]["config"]
        expected_002 = "known failure" if transport == "tcp" else "new failure"
        assert runs[transport]["classes"] == {"nvme/001": "pass", "nvme/002": expected_002, "nvme/003": "notrun"}, runs[transport]
    assert "USE_RXE=1" in runs["rdma"]["config"]
    cases = section["cases"]
    assert cases["nvme/002 (tcp)"]["outcome"] == "as expected" and "fails on purpose over tcp" in cases["nvme/002 (tcp)"]["reason"]
    assert cases["nvme/002 (loop)"]["outcome"] == "unexpected failure (regression)"
    assert "fake failure on loop" in cases["nvme/002 (loop)"]["reason"]
    assert cases["nvme/003 (rdma)"]["verdict"] == "N/A" and "not supported" in cases["nvme/003 (rdma)"]["reason"]
    assert "timed out" in cases["block/002 (device)"]["reason"]
    # Debian's kernels have no siw: its tests do not run, and the reason names the option.
    assert runs["siw"]["classes"] == dict.fromkeys(["nvme/001", "nvme/002", "nvme/003"], "notrun")
    assert cases["nvme/001 (siw)"]["verdict"] == "N/A" and "CONFIG_RDMA_SIW" in cases["nvme/001 (siw)"]["reason"]
    table = (outcome.run_dir.path / "summary.txt").read_text()
    assert "known failure" in table and "timed out" in table
