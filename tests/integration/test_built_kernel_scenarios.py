"""The lab's full kernel (kernel/kernels.toml 'lab-7.3': linux-source-7.3 with every fragment, all
built in) runs the scenarios that need NFS over rxe and P2PDMA, exactly like the packaged kernel.
Part of `tox -e kernel-full` (a cold build of this config takes about 20 minutes here)."""

from __future__ import annotations

import os

import pytest

from lab.scenarios import framework
from lab.scenarios.options import validate

pytestmark = [pytest.mark.timeout(3600), pytest.mark.skipif(bool(os.environ.get("LAB_TEST_FRAGMENTS")),
                                reason="needs the full fragment set: run `tox -e kernel-full`")]

KERNEL = "lab-7.3"


def run(name, **options):
    cls = framework.get(name)
    return framework.run(cls, validate(cls.Options, options))


def test_nfs_dio_over_tcp_and_rxe_on_the_built_kernel():
    section = run("nfs-dio", kernels=[KERNEL], transports=["tcp", "rdma"], only="size=sub-page").results["subruns"][KERNEL]
    assert section["verdict"] == "PASS", section
    assert section["release"].startswith("7.3.4-lab")
    for transport in ("tcp", "rdma"):
        assert f"proto={transport}" in section["cases"][transport]["mount"]


def test_p2p_block_behind_the_switch_on_the_built_kernel():
    sub = next(iter(run("p2p-block", kernels=[KERNEL], placements=["switch"]).results["subruns"].values()))
    assert sub["verdict"] == "PASS", sub


def test_nfs_over_siw_on_the_built_kernel():
    """Soft-iWARP instead of soft-RoCE (Debian's 6.12 has no RDMA_SIW; the lab's config builds it in)."""
    section = run("nfs-dio", kernels=[KERNEL], transports=["rdma"], only="size=sub-page",
                  params={"rdma": "siw"}).results["subruns"][KERNEL]
    assert section["verdict"] == "PASS", section
    assert "proto=rdma" in section["cases"]["rdma"]["mount"]
