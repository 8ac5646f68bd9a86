"""What a booted guest sees of its hardware, gathered over SSH into plain data: the lab's first
job before any scenario, and what the integration tests compare against the topology."""

from __future__ import annotations

import json
import logging
from typing import Any

from lab.guest import Guest

LOG = logging.getLogger(__name__)

# One guest-side script, one SSH round trip: each fork costs under TCG.
GATHER = r"""
python3 - <<'PY'
import glob, json, os, subprocess
def rd(p):
    try:
        return open(p).read().strip()
    except OSError:
        return None
out = {"kernel": os.uname().release, "cmdline": rd("/proc/cmdline"), "namespaces": {}, "p2pmem": {}, "nics": {}, "rdma": []}
for blk in sorted(glob.glob("/sys/block/nvme*n*")):
    name = os.path.basename(blk)
    out["namespaces"][name] = {
        "integrity_format": rd(blk + "/integrity/format"),
        "lba": int(rd(blk + "/queue/logical_block_size") or 0),
        "size_bytes": int(rd(blk + "/size") or 0) * 512,
        "serial": rd(blk + "/device/serial"),
    }
    try:
        ns = json.loads(subprocess.run(["nvme", "id-ns", "/dev/" + name, "-o", "json"], capture_output=True, text=True, timeout=30).stdout)
        flbas = ns["flbas"] & 0xF
        out["namespaces"][name].update(dps=ns["dps"], pi_type=ns["dps"] & 7, ms=ns["lbafs"][flbas]["ms"], flbas=ns["flbas"])
    except Exception as exc:
        out["namespaces"][name]["id_ns_error"] = str(exc)
for ctrl in sorted(glob.glob("/sys/class/nvme/nvme*")):
    dev = os.path.realpath(ctrl + "/device")
    entry = {"bdf": os.path.basename(dev), "serial": rd(ctrl + "/serial")}
    if os.path.isdir(dev + "/p2pmem"):
        entry.update(size=int(rd(dev + "/p2pmem/size")), available=int(rd(dev + "/p2pmem/available")), published=rd(dev + "/p2pmem/published") == "1")
    out["p2pmem"][os.path.basename(ctrl)] = entry
for nic in sorted(glob.glob("/sys/class/net/*")):
    name = os.path.basename(nic)
    if name != "lo":
        out["nics"][name] = {"address": rd(nic + "/address"), "operstate": rd(nic + "/operstate")}
r = subprocess.run(["rdma", "-j", "link"], capture_output=True, text=True)
try:
    out["rdma"] = [{"ifname": l.get("ifname"), "netdev": l.get("netdev"), "state": l.get("state")} for l in json.loads(r.stdout or "[]")]
except ValueError:
    pass
cfg = "/proc/config.gz"
out["pci_p2pdma"] = os.path.isdir("/sys/bus/pci/devices") and any(os.path.isdir(d + "/p2pmem") for d in glob.glob("/sys/bus/pci/devices/*"))
dmesg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
out["cmb_messages"] = [l for l in dmesg.splitlines() if "CMB" in l or "peer-to-peer" in l]
print(json.dumps(out))
PY
"""


def gather(guest: Guest) -> dict[str, Any]:
    res = guest.run(GATHER, timeout=120, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def ping(guest: Guest, address: str) -> bool:
    return guest.run(f"ping -c 2 -W 3 {address.split('/')[0]}", timeout=30).ok


def summary(name: str, facts: dict[str, Any]) -> str:
    lines = [f"{name}: kernel {facts['kernel']}"]
    for ns, d in facts["namespaces"].items():
        pi = f"PI type {d.get('pi_type')}" if d.get("pi_type") else "no PI"
        lines.append(f"  {ns}: {d['size_bytes'] >> 20} MiB, {d['lba']}+{d.get('ms', '?')} B, {pi}, integrity {d['integrity_format']}")
    for ctrl, d in facts["p2pmem"].items():
        if "size" in d:
            lines.append(f"  {ctrl} ({d['bdf']}): p2pmem {d['size'] >> 20} MiB, {d['available'] >> 10} KiB available, published {d['published']}")
        else:
            lines.append(f"  {ctrl} ({d['bdf']}): no p2pmem (kernel without PCI_P2PDMA, or no CMB)")
    for m in facts["cmb_messages"][:4]:
        lines.append(f"    dmesg: {m.split('] ', 1)[-1]}")
    for nic, d in facts["nics"].items():
        lines.append(f"  {nic}: {d['address']} {d['operstate']}")
    for link in facts["rdma"]:
        lines.append(f"  rdma {link['ifname']} on {link['netdev']}: {link['state']}")
    return "\n".join(lines)
