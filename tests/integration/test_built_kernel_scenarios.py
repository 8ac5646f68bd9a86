"""The lab's full kernel (kernel/kernels.toml 'lab-7.3': linux-source-7.3 with every fragment, all
built in) runs the scenarios that need NFS over rxe and P2PDMA, exactly like the packaged kernel.
Part of `tox -e kernel-full` (a cold build of this config takes about 20 minutes here)."""

from __future__ import annotations

import os

import pytest

from lab.scenarios import nfs, p2p

pytestmark = pytest.mark.skipif(bool(os.environ.get("LAB_TEST_FRAGMENTS")),
                                reason="needs the full fragment set: run `tox -e kernel-full`")

KERNEL = "lab-7.3"


def test_nfs_dio_over_tcp_and_rxe_on_the_built_kernel():
    _, results = nfs.run(nfs.Options(kernels=[KERNEL], transports=["tcp", "rdma"], only="size=sub-page"))
    section = results["kernels"][KERNEL]
    assert section["verdict"] == "PASS", section
    assert section["release"].startswith("7.3.4-lab")
    for transport in ("tcp", "rdma"):
        assert f"proto={transport}" in section["transports"][transport]["mount"]


def test_p2p_block_behind_the_switch_on_the_built_kernel():
    _, results = p2p.run(p2p.Options(kernels=[KERNEL], placements=["switch"]))
    run = next(iter(results["runs"].values()))
    assert run["verdict"] == "PASS", run


def test_nfs_over_siw_on_the_built_kernel():
    """Soft-iWARP instead of soft-RoCE (Debian's 6.12 has no RDMA_SIW; the lab's config builds it in)."""
    _, results = nfs.run(nfs.Options(kernels=[KERNEL], transports=["rdma"], only="size=sub-page", params={"rdma": "siw"}))
    section = results["kernels"][KERNEL]
    assert section["verdict"] == "PASS", section
    assert "proto=rdma" in section["transports"]["rdma"]["mount"]
