"""The checks across a topology document that a field's schema cannot express, and the switch-port
placement both the checks and the QEMU command line read."""

from __future__ import annotations

from typing import Any

import pytest

from lab.topology.checks import check_references, switch_port_of
from lab.topology.model import Topology


def topology(nvme: list[dict[str, Any]], switches: list[dict[str, Any]] | None = None, **machine: Any) -> Topology:
    return Topology.model_validate({"name": "t", "machines": {"vm": {"switches": switches or [], "nvme": nvme, **machine}}})


def test_controllers_without_a_port_take_the_lowest_free_one_in_document_order():
    topo = topology([{"id": "nvme0", "bus": "sw0"}, {"id": "nvme1", "bus": "sw0", "port": 0}, {"id": "nvme2", "bus": "sw0"}],
                    [{"name": "sw0", "ports": 3}])
    assert check_references(topo) is None
    assert switch_port_of(topo, "vm") == {"nvme1": ("sw0", 0), "nvme0": ("sw0", 1), "nvme2": ("sw0", 2)}


@pytest.mark.parametrize("nvme,switches,problem", [
    ([{"id": "nvme0", "bus": "sw9"}], [], "machines.vm.nvme[0].bus: no switch 'sw9' on this machine; allowed: root-port, root-complex"),
    ([{"id": "nvme0"}, {"id": "nvme0"}], [], "machines.vm.nvme[1].id: controller 'nvme0' is defined twice"),
    ([{"id": "nvme0", "bus": "root-port", "port": 1}], [], "machines.vm.nvme[0].port: a port number only applies on a switch"),
    ([{"id": "nvme0", "bus": "sw0", "port": 2}], [{"name": "sw0", "ports": 2}], "switch 'sw0' has ports 0-1 (got 2)"),
    ([{"id": "nvme0", "bus": "sw0", "port": 1}, {"id": "nvme1", "bus": "sw0", "port": 1}], [{"name": "sw0", "ports": 2}],
     "machines.vm.nvme[1].port: port 1 of switch 'sw0' is already taken by nvme0"),
    ([{"id": "nvme0", "bus": "sw0", "port": 0}, {"id": "nvme1", "bus": "sw0"}], [{"name": "sw0", "ports": 1}],
     "machines.vm.nvme[1].bus: switch 'sw0' has no free downstream port (1 ports)"),
    ([], [{"name": "root-port"}], "machines.vm.switches[0].name: 'root-port' is reserved"),
    ([], [{"name": "sw0"}, {"name": "sw0"}], "machines.vm.switches[1].name: switch 'sw0' is defined twice"),
    ([{"id": "nvme0", "namespaces": [{"size": "1G", "nsid": 1}, {"size": "1G", "nsid": 1}]}], [],
     "machines.vm.nvme[0].namespaces[0].nsid: nsid 1 is used twice"),
])
def test_each_cross_reference_mistake_names_its_path(nvme, switches, problem):
    assert problem in (check_references(topology(nvme, switches)) or "")


def test_a_private_link_joins_exactly_two_machines():
    doc = {"name": "t", "links": [{"name": "lan"}], "machines": {
        "a": {"nics": [{"link": "lan", "address": "10.0.0.1/24"}]},
        "b": {"nics": [{"link": "wan", "address": "10.0.0.2/24"}]}}}
    assert check_references(Topology.model_validate(doc)) == "machines.b.nics[0].link: no link 'wan'; links: lan"
    doc["machines"]["b"]["nics"][0]["link"] = "lan"
    assert check_references(Topology.model_validate(doc)) is None
    del doc["machines"]["b"]
    assert "link 'lan' has 1 end(s)" in (check_references(Topology.model_validate(doc)) or "")
