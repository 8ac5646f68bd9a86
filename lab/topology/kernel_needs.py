"""What a topology's hardware needs from a kernel's config, checked before anything boots: a NIC
with rdma=siw under a kernel without siw would boot, fail `rdma link add` quietly in the guest and
end much later in "mount.nfs: Protocol error"."""

from __future__ import annotations

from lab.errors import UsageError
from lab.kernels.kernel import Kernel
from lab.topology.model import Topology

# rdma= of a NIC -> the option that builds its driver.
RDMA_OPTIONS = {"rxe": "RDMA_RXE", "siw": "RDMA_SIW"}


def kernel_gaps(topology: Topology, machine: str, kernel: Kernel) -> list[str]:
    """'nic on LINK: rdma=KIND needs CONFIG_X' for each thing the machine has that the kernel's
    config does not build. Nothing when the kernel came without a config (it cannot be told)."""
    if kernel.config is None:
        return []
    gaps = []
    for nic in topology.machines[machine].nics:
        option = RDMA_OPTIONS.get(nic.rdma)
        if option and kernel.config_value(option) is None:
            gaps.append(f"its NIC on {nic.link} has rdma={nic.rdma}, which needs CONFIG_{option}")
    return gaps


def check_kernel_fits(topology: Topology, kernels: dict[str, Kernel], name: str = "") -> None:
    """UsageError naming the first machine whose kernel lacks what the topology gives it."""
    for machine, kernel in kernels.items():
        gaps = kernel_gaps(topology, machine, kernel)
        if gaps:
            hint = ("; Debian's kernels build rdma_rxe only: -p rdma=rxe, or a kernel built with the nfs-rdma fragment"
                    if any("RDMA_SIW" in g for g in gaps) else "")
            where = f"topology {name}: " if name else ""
            raise UsageError(f"{where}{machine}: {gaps[0]}, and kernel {kernel.ref} ({kernel.release}) does not set it{hint}")
