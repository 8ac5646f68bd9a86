"""A topology's hardware against a kernel's config, before anything boots: Debian's kernels build
rdma_rxe but not siw."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.kernels.kernel import Kernel
from lab.topology.kernel_needs import check_kernel_fits, kernel_gaps
from lab.topology.render import render


def kernel(tmp_path: Path, config: str | None) -> Kernel:
    path = None
    if config is not None:
        path = tmp_path / "config"
        path.write_text(config)
    return Kernel(ref="debian:7.3", release="7.3.4+deb13-amd64", vmlinuz=tmp_path / "vmlinuz", modules_dir=None,
                  modules_image=None, config=path, sha256="0" * 64, meta={})


DEBIAN = "CONFIG_RDMA_RXE=m\n# CONFIG_RDMA_SIW is not set\n"


def test_siw_under_a_kernel_without_it_is_bad_input_naming_machine_option_and_way_out(tmp_path):
    topo = render("nfs-rdma-pair", {"rdma": "siw"}).topology
    k = kernel(tmp_path, DEBIAN)
    assert kernel_gaps(topo, "client", k) == ["its NIC on lan has rdma=siw, which needs CONFIG_RDMA_SIW"]
    with pytest.raises(UsageError) as err:
        check_kernel_fits(topo, dict.fromkeys(topo.machines, k), "nfs-rdma-pair")
    message = str(err.value)
    assert message.startswith("topology nfs-rdma-pair: ") and "CONFIG_RDMA_SIW" in message
    assert "debian:7.3 (7.3.4+deb13-amd64)" in message and "-p rdma=rxe" in message and "\n" not in message


def test_what_the_kernel_builds_or_cannot_tell_passes(tmp_path):
    rxe = render("nfs-rdma-pair", {"rdma": "rxe"}).topology
    check_kernel_fits(rxe, dict.fromkeys(rxe.machines, kernel(tmp_path, DEBIAN)))
    siw = render("nfs-rdma-pair", {"rdma": "siw"}).topology
    check_kernel_fits(siw, dict.fromkeys(siw.machines, kernel(tmp_path, "CONFIG_RDMA_SIW=y\n")))
    check_kernel_fits(siw, dict.fromkeys(siw.machines, kernel(tmp_path, None)))  # a bare bzImage: no config to read
    check_kernel_fits(render("nvme-pi").topology, {"vm": kernel(tmp_path, "")})  # no NIC, nothing needed
