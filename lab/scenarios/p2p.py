"""P2PDMA pre-flight: who publishes P2P memory, and which provider/client pairs the kernel's
distance rules (drivers/pci/p2pdma.c) allow for this PCIe layout. Pure functions of the facts
scenarios/p2p/preflight.py gathers in the guest."""

from __future__ import annotations

# The kernel's refusal of an unreachable pair: the errno the block layer returns and the line it logs.
REFUSAL_ERRNO = "EINVAL"
REFUSAL_MESSAGE = "cannot be used for peer-to-peer DMA"


# -- the kernel's distance rules, as far as the lab predicts them ---------------------------------
def host_bridge_whitelisted(cpu: dict, host_bridge: dict | None) -> bool:
    """drivers/pci/p2pdma.c: AMD Zen (family >= 0x17) and a short list of Intel host bridges, of
    which QEMU's q35 (8086:29c0) is not one."""
    if cpu.get("vendor") == "AuthenticAMD" and cpu.get("family", 0) >= 0x17:
        return True
    intel = {"0x3c00", "0x2f00", "0x2030", "0x2020", "0x09a2"}
    return bool(host_bridge and host_bridge.get("vendor") == "0x8086" and host_bridge.get("device") in intel)


def predict(provider: dict, client: dict, cpu: dict, host_bridge: dict | None) -> tuple[bool, str]:
    """(reachable, why) for DMA from client's device into provider's P2P memory."""
    if provider["bdf"] == client["bdf"]:
        return True, "same device"
    a, b = provider["path"], client["path"]
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    below = [*a[common:-1], *b[common:-1]]
    acs = [bdf for bdf in below + a[:common] if (provider["acs_redirect"] | client["acs_redirect"]).get(bdf)]
    if common > 0 and not acs:
        return True, f"common upstream bridge {a[common - 1]} (a PCIe switch)"
    reason = f"ACS redirect on {', '.join(acs)}" if acs else "no common upstream bridge: the path goes through the host bridge"
    if host_bridge_whitelisted(cpu, host_bridge):
        return True, f"{reason}, which is whitelisted (CPU {cpu.get('vendor')} family {cpu.get('family'):#x})"
    return False, f"{reason}, which is not whitelisted (CPU {cpu.get('vendor')} family {cpu.get('family'):#x})"


def preflight_report(facts: dict) -> list[str]:
    lines = [f"kernel {facts['kernel']}, CPU {facts['cpu']['vendor']} family {facts['cpu']['family']:#x}, "
             f"nvme.use_cmb_sqes={facts.get('sqes_in_cmb')}"]
    ctrls = facts["controllers"]
    for name, c in ctrls.items():
        mem = c["p2pmem"]
        desc = (f"p2pmem {mem['size'] >> 20} MiB, {mem['available'] >> 10} KiB available, published {mem['published']}"
                if mem else "no p2pmem")
        lines.append(f"  {name} {c['bdf']} path {' > '.join(c['path'])}: {desc}")
    for pname, p in ctrls.items():
        if not p["p2pmem"]:
            continue
        for cname, c in ctrls.items():
            ok, why = predict(p, c, facts["cpu"], facts.get("host_bridge"))
            lines.append(f"  provider {pname} <- client {cname}: {'reachable' if ok else 'refused'} ({why})")
    for m in facts["messages"][-6:]:
        lines.append(f"  dmesg: {m.split('] ', 1)[-1]}")
    return lines
