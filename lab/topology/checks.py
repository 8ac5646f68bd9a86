"""Checks across the document that a per-field schema cannot express: names that refer to each
other, ports used twice, links with one end."""

from __future__ import annotations

from lab.topology.model import Machine, Topology

BUS_KEYWORDS = ("root-port", "root-complex")


def check_references(topology: Topology) -> str | None:
    """The first problem as 'path: what is wrong and what is allowed', or None."""
    for mname, machine in topology.machines.items():
        base = f"machines.{mname}"
        switch_names = [s.name for s in machine.switches]
        for i, name in enumerate(switch_names):
            if name in BUS_KEYWORDS:
                return f"{base}.switches[{i}].name: {name!r} is reserved"
            if switch_names.index(name) != i:
                return f"{base}.switches[{i}].name: switch {name!r} is defined twice"
        problem = _allocate_ports(machine, base)[1]
        if problem:
            return problem
        for i, ctrl in enumerate(machine.nvme):
            nsids = [ns.nsid for ns in ctrl.namespaces if ns.nsid]
            for j, ns in enumerate(ctrl.namespaces):
                if ns.nsid and nsids.count(ns.nsid) > 1:
                    return f"{base}.nvme[{i}].namespaces[{j}].nsid: nsid {ns.nsid} is used twice"
        tags = [sh.tag for sh in machine.shares]
        for i, tag in enumerate(tags):
            if tags.index(tag) != i:
                return f"{base}.shares[{i}].tag: share {tag!r} is defined twice"
        links = [n.link for n in machine.nics]
        for i, link in enumerate(links):
            if links.index(link) != i:
                return f"{base}.nics[{i}].link: this machine already has a NIC on link {link!r}"
    declared = [link.name for link in topology.links]
    for i, name in enumerate(declared):
        if declared.index(name) != i:
            return f"links[{i}].name: link {name!r} is defined twice"
    ends: dict[str, list[str]] = {name: [] for name in declared}
    for mname, machine in topology.machines.items():
        for i, nic in enumerate(machine.nics):
            if nic.link not in ends:
                allowed = ", ".join(declared) or "none declared under 'links'"
                return f"machines.{mname}.nics[{i}].link: no link {nic.link!r}; links: {allowed}"
            ends[nic.link].append(f"machines.{mname}.nics[{i}]")
    for i, name in enumerate(declared):
        count = len(ends[name])
        if count != 2:
            where = ", ".join(ends[name]) or "no NIC"
            return f"links[{i}]: link {name!r} has {count} end(s) ({where}); a private link joins exactly two machines"
    return None


def _allocate_ports(machine: Machine, base: str) -> tuple[dict[str, tuple[str, int]], str | None]:
    """Controller id -> (switch, downstream port): ports given in the document first, then the
    lowest free one in document order; or the first problem (unknown bus, duplicate id, a port out
    of range or taken twice, a switch with no free port)."""
    ports = {s.name: s.ports for s in machine.switches}
    taken: dict[tuple[str, int], str] = {}
    placed: dict[str, tuple[str, int]] = {}
    seen_ids: set[str] = set()
    for i, ctrl in enumerate(machine.nvme):
        path = f"{base}.nvme[{i}]"
        if ctrl.id in seen_ids:
            return placed, f"{path}.id: controller {ctrl.id!r} is defined twice"
        seen_ids.add(ctrl.id)
        if ctrl.bus not in BUS_KEYWORDS and ctrl.bus not in ports:
            allowed = ", ".join([*BUS_KEYWORDS, *ports])
            return placed, f"{path}.bus: no switch {ctrl.bus!r} on this machine; allowed: {allowed}"
        if ctrl.bus in BUS_KEYWORDS:
            if ctrl.port is not None:
                return placed, f"{path}.port: a port number only applies on a switch (bus is {ctrl.bus!r})"
            continue
        if ctrl.port is not None:
            if ctrl.port >= ports[ctrl.bus]:
                return placed, f"{path}.port: switch {ctrl.bus!r} has ports 0-{ports[ctrl.bus] - 1} (got {ctrl.port})"
            if (ctrl.bus, ctrl.port) in taken:
                return placed, f"{path}.port: port {ctrl.port} of switch {ctrl.bus!r} is already taken by {taken[(ctrl.bus, ctrl.port)]}"
            taken[(ctrl.bus, ctrl.port)] = ctrl.id
            placed[ctrl.id] = (ctrl.bus, ctrl.port)
    for i, ctrl in enumerate(machine.nvme):
        if ctrl.bus in ports and ctrl.port is None:
            free = [p for p in range(ports[ctrl.bus]) if (ctrl.bus, p) not in taken]
            if not free:
                return placed, f"{base}.nvme[{i}].bus: switch {ctrl.bus!r} has no free downstream port ({ports[ctrl.bus]} ports)"
            taken[(ctrl.bus, free[0])] = ctrl.id
            placed[ctrl.id] = (ctrl.bus, free[0])
    return placed, None


def switch_port_of(topology: Topology, machine: str) -> dict[str, tuple[str, int]]:
    """Controller id -> (switch, downstream port), with free ports assigned in document order."""
    placed, problem = _allocate_ports(topology.machines[machine], f"machines.{machine}")
    assert problem is None, problem  # check_references refused the document before it got here
    return placed
