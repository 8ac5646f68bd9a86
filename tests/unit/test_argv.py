"""QEMU argv rendering: what each part of a topology becomes on the command line."""


from lab.qemu_caps import QemuCaps
from lab.topology.argv import Accel, machine_argv
from lab.topology.render import render

from tests.unit.topology_files import boot_files

CAPS = QemuCaps("/usr/bin/qemu-system-x86_64", "7.2.22", {})


def argv_of(name, machine, params=None, accel="tcg"):
    topo = render(name, params or {}).topology
    return machine_argv(topo, machine, boot_files(topo, machine), CAPS, Accel(accel))


def devices(plan):
    return [plan.argv[i + 1] for i, a in enumerate(plan.argv) if a == "-device"]


def test_nvme_pi_namespace_properties():
    plan = argv_of("nvme-pi", "vm")
    ns = next(d for d in devices(plan) if d.startswith("nvme-ns"))
    assert "logical_block_size=4096" in ns and "ms=8" in ns and "pi=1" in ns and "bus=nvme0" in ns
    ctrl = next(d for d in devices(plan) if d.startswith("nvme,"))
    assert "cmb_size_mb=64" in ctrl and "bus=nvme0-rp" in ctrl
    assert any(d.startswith("pcie-root-port,id=nvme0-rp") for d in devices(plan))


def test_management_nic_is_restricted_and_local():
    plan = argv_of("nvme-pi", "vm")
    netdev = plan.argv[plan.argv.index("-netdev") + 1]
    assert netdev.startswith("user,") and "restrict=on" in netdev and "hostfwd=tcp:127.0.0.1:0-:22" in netdev


def test_switch_chain_and_placement():
    plan = argv_of("p2p-switch", "vm")
    devs = devices(plan)
    assert "pcie-root-port,id=sw0-rp,bus=pcie.0,chassis=1,slot=0" in devs
    assert "x3130-upstream,id=sw0-up,bus=sw0-rp" in devs
    assert [d for d in devs if d.startswith("xio3130-downstream")] == [
        "xio3130-downstream,id=sw0-dp0,bus=sw0-up,chassis=2,slot=0",
        "xio3130-downstream,id=sw0-dp1,bus=sw0-up,chassis=2,slot=1",
    ]
    ctrls = [d for d in devs if d.startswith("nvme,")]
    assert "bus=sw0-dp0" in ctrls[0] and "bus=sw0-dp1" in ctrls[1]


def test_root_port_placement_and_cpu_model():
    plan = argv_of("p2p-switch", "vm", {"placement": "root-port", "cpu": "EPYC"})
    ctrls = [d for d in devices(plan) if d.startswith("nvme,")]
    assert "bus=nvme0-rp" in ctrls[0] and "bus=nvme1-rp" in ctrls[1]
    assert plan.argv[plan.argv.index("-cpu") + 1] == "EPYC"
    chassis = [d.split("chassis=")[1].split(",")[0] for d in devices(plan) if d.startswith("pcie-root-port")]
    assert len(chassis) == len(set(chassis))


def test_private_link_sockets_are_crossed():
    server = argv_of("nfs-rdma-pair", "server")
    client = argv_of("nfs-rdma-pair", "client")
    s_net = next(a for a in server.argv if a.startswith("dgram,"))
    c_net = next(a for a in client.argv if a.startswith("dgram,"))
    assert "local.path=/run/x/lan.server" in s_net and "remote.path=/run/x/lan.client" in s_net
    assert "local.path=/run/x/lan.client" in c_net and "remote.path=/run/x/lan.server" in c_net
    assert "lab.nic=52:54:00:4c:00:01,lan,192.168.77.1/24,,9000,rxe" in server.cmdline
    assert "lab.nic=52:54:00:4c:01:01,lan,192.168.77.2/24,,9000,rxe" in client.cmdline
    assert ",1500,rxe" in argv_of("nfs-rdma-pair", "server", {"mtu": 1500}).cmdline


def test_tcg_is_multi_threaded_and_kvm_uses_the_host_cpu():
    assert "tcg,thread=multi" in argv_of("nvme-pi", "vm").argv
    kvm = argv_of("nvme-pi", "vm", accel="kvm").argv
    assert kvm[kvm.index("-accel") + 1] == "kvm" and kvm[kvm.index("-cpu") + 1] == "host"


def test_use_cmb_sqes_reaches_the_kernel_command_line():
    assert "nvme.use_cmb_sqes=0" in argv_of("p2p-switch", "vm", {"use_cmb_sqes": False}).cmdline
    assert "use_cmb_sqes" not in argv_of("p2p-switch", "vm").cmdline


def test_namespace_images_sized_from_topology():
    plan = argv_of("nvme-pi", "vm", {"ns_size": "2G"})
    assert plan.namespace_sizes == {"nvme0n1": 2 << 30}


def test_no_hardware_virtualization_means_no_kvm_probe():
    from lab.accel import virtualization_flag

    assert virtualization_flag("processor\t: 0\nflags\t\t: fpu vme sse2 vmx ept\n") == "vmx"
    assert virtualization_flag("flags\t\t: fpu svm npt\n") == "svm"
    # This machine: /dev/kvm exists, the CPU shows neither, and a probe guest only hangs.
    assert virtualization_flag("flags\t\t: fpu vme de pse tsc msr pae hypervisor\n") is None
    assert virtualization_flag("") is None
