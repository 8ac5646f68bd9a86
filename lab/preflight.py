"""Before anything boots: every machine's QEMU command line rendered against this QEMU (properties
it lacks and unknown CPU models are usage errors now, not a failed boot later), and every kernel
fetched or built, with missing guest images built meanwhile."""

from __future__ import annotations

from typing import Sequence

from lab.kernels.kernel import Kernel
from lab.topology.model import Topology


def resolve_kernels(refs: Sequence[str], images: Sequence[str] = ()) -> dict[str, Kernel]:
    """Every kernel of the run, fetched or built before the first boot: a bad second kernel is
    found before the first one boots, and nothing waits for a download between sub-runs. Guest
    images missing from the cache are built meanwhile in a helper thread (mmdebstrap and the kernel
    downloads do not depend on each other: a first run overlaps them)."""
    from lab.images import ImagesInBackground
    from lab.kernels.resolve import resolve

    builder = ImagesInBackground(images)
    out: dict[str, Kernel] = {}
    for ref in dict.fromkeys(refs):
        out[ref] = resolve(ref)
    builder.join()
    return out


def check_against_qemu(topologies: Sequence[Topology]) -> None:
    """Render each machine's QEMU command line once, without starting anything: properties this
    QEMU lacks and unknown CPU models are usage errors now, not a failed boot later."""
    from lab.qemu_caps import probe
    from lab.topology.argv import Accel, dry_run_files, machine_argv

    caps = probe()
    for topo in topologies:
        for name in topo.machines:
            machine_argv(topo, name, dry_run_files(topo, name), caps, Accel("tcg"))
