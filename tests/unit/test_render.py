"""Rendering and validation of topologies, and every bad-input case: one line naming the template,
the path inside the document and what is allowed."""

from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.qemu_caps import QemuCaps, parse_device_help
from lab.topology.argv import Accel, BootFiles, machine_argv
from lab.topology.render import TopologyError, available, parse_params, render

from tests.unit.topology_files import boot_files

SHIPPED = ["nvme-pi", "nfs-rdma-pair", "p2p-switch"]


def test_shipped_topologies_render():
    assert set(SHIPPED) <= set(available())
    for name in SHIPPED:
        topo = render(name).topology
        for machine in topo.machines.values():
            for ctrl in machine.nvme:
                for ns in ctrl.namespaces:
                    assert ns.size >= 64 << 20


def test_nvme_pi_defaults_match_the_issue():
    vm = render("nvme-pi").topology.machines["vm"]
    ctrl = vm.nvme[0]
    assert ctrl.cmb_size_mb == 64
    ns = ctrl.namespaces[0]
    assert (ns.pi, ns.lba, ns.ms, ns.pif) == (1, 4096, 8, 0)
    assert ns.size >= 300 << 20  # room for XFS


@pytest.mark.parametrize("name", SHIPPED)
def test_common_parameters_are_accepted(name):
    topo = render(name, {"pi": 2, "pif": 2, "ms": 16, "lba": 4096, "cmb_mb": 32, "ns_size": "2G"}).topology
    namespaces = [ns for m in topo.machines.values() for c in m.nvme for ns in c.namespaces if ns.pi]
    assert namespaces and all(ns.pi == 2 and ns.pif == 2 and ns.ms == 16 and ns.size == 2 << 30 for ns in namespaces)
    assert all(c.cmb_size_mb == 32 for m in topo.machines.values() for c in m.nvme)


def test_pif2_defaults_metadata_to_16():
    ns = render("nvme-pi", {"pif": 2}).topology.machines["vm"].nvme[0].namespaces[0]
    assert ns.ms == 16


def test_p_values_become_numbers_booleans_or_strings():
    assert parse_params(["pi=1", "ns_size=2G", "x=on", "s=abc"]) == {"pi": 1, "ns_size": "2G", "x": True, "s": "abc"}
    with pytest.raises(TopologyError.__mro__[1]):
        parse_params(["novalue"])


def _error(name, params=None, directory=None) -> str:
    with pytest.raises(TopologyError) as info:
        render(name, params, directory)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_value_out_of_range_names_the_path():
    msg = _error("nvme-pi", {"pi": 5})
    assert "topologies/nvme-pi.yaml.j2" in msg
    assert "machines.vm.nvme[0].namespaces[0].pi" in msg
    assert "0, 1, 2 or 3" in msg


def test_pi_without_enough_metadata():
    msg = _error("nvme-pi", {"pi": 1, "ms": 0})
    assert "machines.vm.nvme[0].namespaces[0]" in msg and "ms >= 8" in msg


def test_unknown_parameter():
    msg = _error("nvme-pi", {"bogus": 1})
    assert "unknown parameter bogus" in msg and "pi" in msg


def test_unknown_topology():
    msg = _error("no-such-topology")
    assert "nvme-pi" in msg


def write(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / f"{name}.yaml.j2").write_text(text)
    return tmp_path


BASE = """name: t
machines:
  vm:
    nvme:
      - id: nvme0
        namespaces:
          - size: 1G
"""


def test_undefined_variable(tmp_path):
    d = write(tmp_path, "t", BASE.replace("1G", "{{ size }}"))
    msg = _error("t", {}, d)
    assert "'size' is undefined" in msg


def test_broken_yaml_names_its_line(tmp_path):
    d = write(tmp_path, "t", "name: t\nmachines: [unclosed\n")
    msg = _error("t", {}, d)
    assert "YAML error" in msg and "line" in msg


def test_an_unknown_topology_key_is_named_by_its_path(tmp_path):
    d = write(tmp_path, "t", BASE.replace("      - id: nvme0", "      - id: nvme0\n        colour: blue"))
    msg = _error("t", {}, d)
    assert "machines.vm.nvme[0].colour: unknown key" in msg


def test_two_devices_on_one_port(tmp_path):
    text = """name: t
machines:
  vm:
    switches: [{name: sw0, ports: 2}]
    nvme:
      - {id: nvme0, bus: sw0, port: 1}
      - {id: nvme1, bus: sw0, port: 1}
"""
    msg = _error("t", {}, write(tmp_path, "t", text))
    assert "machines.vm.nvme[1].port" in msg and "already taken by nvme0" in msg


def test_switch_out_of_ports(tmp_path):
    text = """name: t
machines:
  vm:
    switches: [{name: sw0, ports: 1}]
    nvme:
      - {id: nvme0, bus: sw0}
      - {id: nvme1, bus: sw0}
"""
    msg = _error("t", {}, write(tmp_path, "t", text))
    assert "no free downstream port" in msg


def test_a_controller_on_an_unknown_switch_lists_the_allowed_buses(tmp_path):
    text = "name: t\nmachines:\n  vm:\n    nvme:\n      - {id: nvme0, bus: sw9}\n"
    msg = _error("t", {}, write(tmp_path, "t", text))
    assert "machines.vm.nvme[0].bus" in msg and "root-port" in msg


def test_link_with_one_end(tmp_path):
    text = """name: t
links: [{name: lan}]
machines:
  a:
    nics: [{link: lan, address: 10.9.0.1/24}]
  b: {}
"""
    msg = _error("t", {}, write(tmp_path, "t", text))
    assert "links[0]" in msg and "1 end" in msg


def test_a_bad_link_address_is_refused(tmp_path):
    text = """name: t
links: [{name: lan}]
machines:
  a:
    nics: [{link: lan, address: 10.9.0.300/24}]
  b:
    nics: [{link: lan, address: 10.9.0.2/24}]
"""
    msg = _error("t", {}, write(tmp_path, "t", text))
    assert "machines.a.nics[0].address" in msg


HELP = """nvme-ns options:
  ms=<uint16>            -  (default: 0)
  pi=<uint8>             -  (default: 0)
  logical_block_size=<size> - A power of two
"""


def test_parse_device_help():
    assert parse_device_help(HELP) == {"ms", "pi", "logical_block_size"}


def test_property_this_qemu_lacks():
    caps = QemuCaps("/usr/bin/qemu-system-x86_64", "0.0-test", {"nvme-ns": frozenset({"ms", "pi", "pil", "mset"}), "nvme": frozenset({"cmb_size_mb"})})
    topo = render("nvme-pi", {"pif": 2}).topology
    with pytest.raises(Exception) as info:
        machine_argv(topo, "vm", boot_files(topo, "vm"), caps, Accel("tcg"))
    assert "machines.vm.nvme[0].namespaces[0].pif" in str(info.value) and "no nvme-ns property 'pif'" in str(info.value)



# -- inputs that cannot hurt the host ---------------------------------------------------------------
def test_parameter_values_cannot_add_yaml_keys(tmp_path):
    d = write(tmp_path, "t", BASE.replace("1G", "{{ size }}"))
    # Through -p: a newline, a space or a '#' never reaches the template.
    for raw in ("1G\nappend: init=/bin/sh", "1G\n    append: x", "1G #", "{a: 1}", "'1G'", "1G\r"):
        with pytest.raises(UsageError):
            parse_params([f"size={raw}"])
    # Through a dict (a bundle, a matrix): the same check.
    with pytest.raises(UsageError, match="not a plain number"):
        render("t", {"size": "1G\n    append: init=/bin/sh"}, d)
    assert render("t", {"size": "2G"}, d).topology.machines["vm"].nvme[0].namespaces[0].size == 2 << 30


def test_parameter_given_twice_and_pi_true():
    with pytest.raises(UsageError, match="given twice"):
        parse_params(["pi=1", "pi=2"])
    assert _error("nvme-pi", {"pi": True}).endswith("not true/false (got True)")
    assert "whole number" in _error("nvme-pi", {"pi": 1.0})
    with pytest.raises(UsageError, match="not a finite number"):
        parse_params(["cpus=.nan"])


def test_yaml_duplicate_keys_are_errors(tmp_path):
    d = write(tmp_path, "t", BASE + "name: again\n")
    assert "key 'name' appears twice" in _error("t", {}, d)
    d = write(tmp_path, "t", BASE.replace("      - id: nvme0", "      - id: nvme0\n        id: nvme1"))
    assert "key 'id' appears twice" in _error("t", {}, d)


@pytest.mark.parametrize("text,expected", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "refused by the template sandbox"),
    ("{{ cycler.__init__.__globals__.os.system('id') }}", "refused by the template sandbox"),
    ("{{ 1 / 0 }}", "raised ZeroDivisionError"),
    ("{% include 't.yaml.j2' %}", "recurses without end"),
    ("{% include '/etc/passwd' %}", "which is not a template next to it"),
    ("{% for x in range(10) %}", "template syntax error"),
    ("{{ range(10**9) | list }}", "MAX_RANGE"),
])
def test_templates_that_misbehave(tmp_path, text, expected):
    msg = _error("t", {}, write(tmp_path, "t", text))
    assert expected in msg and "t.yaml.j2" in msg


def test_templates_that_are_not_text_or_too_big(tmp_path):
    (tmp_path / "b.yaml.j2").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    assert "not a text file" in _error("b", {}, tmp_path)
    (tmp_path / "h.yaml.j2").write_text("x" * (300 << 10))
    assert "at most 256 KiB" in _error("h", {}, tmp_path)
    assert "not a name or a path" in _error("x" * 5000)
    assert "no such file" in _error(str(tmp_path / "missing.yaml.j2"))
    assert "not a file" in _error(str(tmp_path) + "/")


def test_cpu_models_are_checked_against_this_qemu():
    caps = QemuCaps("/usr/bin/qemu-system-x86_64", "7.2", {}, frozenset({"max", "EPYC", "EPYC-v4", "host"}))
    topo = render("p2p-switch", {"cpu": "EPYC"}).topology
    machine_argv(topo, "vm", boot_files(topo, "vm"), caps, Accel("tcg"))
    topo = render("p2p-switch", {"cpu": "max,family=23"}).topology
    machine_argv(topo, "vm", boot_files(topo, "vm"), caps, Accel("tcg"))
    topo = render("p2p-switch", {"cpu": "EPYX"}).topology
    with pytest.raises(UsageError, match="no CPU model 'EPYX'; similar: EPYC, EPYC-v4"):
        machine_argv(topo, "vm", boot_files(topo, "vm"), caps, Accel("tcg"))


def test_host_paths_with_commas_are_escaped_in_option_strings():

    topo = render("nfs-rdma-pair").topology
    run = Path("/tmp/a,b=c")
    files = BootFiles(Path("/k"), Path("/i"), run / "root.qcow2", Path("/m,x.img"), run / "qmp.sock", run / "c.log",
                      {"nvme0n1": run / "n.img"}, {"lan": (run / "l.a", run / "l.b")}, "KEY")
    argv = machine_argv(topo, "server", files, QemuCaps("/q", "7.2", {}), Accel("tcg")).argv
    joined = "\n".join(argv)
    assert "file=/tmp/a,,b=c/root.qcow2,format=qcow2" in joined
    assert "unix:/tmp/a,,b=c/qmp.sock,server=on" in joined
    assert "path=/tmp/a,,b=c/c.log" in joined and "file=/m,,x.img,format=raw" in joined
    assert "local.path=/tmp/a,,b=c/l.a,remote.type=unix,remote.path=/tmp/a,,b=c/l.b" in joined


def test_integrity_format_names_follow_linux():
    from lab.topology.model import Namespace

    assert Namespace(pi=1, ms=8).integrity_format == "T10-DIF-TYPE1-CRC"
    assert Namespace(pi=2, ms=8).integrity_format == "T10-DIF-TYPE1-CRC"  # one profile for types 1 and 2
    assert Namespace(pi=3, ms=8).integrity_format == "T10-DIF-TYPE3-CRC"
    assert Namespace(pi=3, ms=16, pif=2).integrity_format == "EXT-DIF-TYPE3-CRC64"
    assert Namespace().integrity_format is None


def test_the_agent_port_and_the_arguments_that_skip_work():
    from dataclasses import replace

    topo = render("nvme-pi").topology
    files = replace(boot_files(topo, "vm"), agent_socket=Path("/run/a,b/agent.sock"))
    plan = machine_argv(topo, "vm", files, QemuCaps("/q", "7.2", {}), Accel("tcg"))
    joined = "\n".join(plan.argv)
    assert "socket,id=lab-agent,path=/run/a,,b/agent.sock,server=on,wait=off" in joined
    assert "virtserialport,bus=lab-serial.0,chardev=lab-agent,name=org.qemu.guest_agent.0" in joined
    assert {"cryptomgr.notests", "norandmaps", "mitigations=off"} <= set(plan.cmdline.split())
    assert plan.argv[plan.argv.index("-cpu") + 1] == "max"  # not invtsc: QEMU 7.2's TCG drops it with a warning
    assert "lab-agent" not in "\n".join(machine_argv(topo, "vm", boot_files(topo, "vm"), QemuCaps("/q", "7.2", {}), Accel("tcg")).argv)
    # A topology's own CPU model is used as it is; KVM keeps the probe's model.
    assert Accel("tcg").argv("EPYC")[-1] == "EPYC" and Accel("kvm", "host").argv(None)[-1] == "host"
