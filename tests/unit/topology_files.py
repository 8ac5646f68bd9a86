"""Boot files for the argv tests: the paths a rendered machine would be started with."""

from __future__ import annotations

from pathlib import Path

from lab.topology.argv import BootFiles


def boot_files(topo, name):
    """Made-up paths for every file a machine boots with: what argv rendering needs, nothing real."""
    from lab.topology.argv import namespace_drive_ids

    machine = topo.machines[name]
    run = Path("/run/x")
    links = {}
    for nic in machine.nics:
        peer = next(m for m in topo.machines if m != name)
        links[nic.link] = (run / f"{nic.link}.{name}", run / f"{nic.link}.{peer}")
    return BootFiles(Path("/k"), Path("/i"), run / "root.qcow2", Path("/m.img"), run / "qmp.sock", run / "c.log",
                     {d: run / f"{d}.img" for d in namespace_drive_ids(machine)}, links, "KEY")
