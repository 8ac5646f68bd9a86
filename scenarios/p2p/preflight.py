#!/usr/bin/env python3
"""Guest side of the P2P pre-flight: controllers, their p2pmem, the PCIe path of each, ACS redirect
bits on the bridges above them, the CPU (for the kernel's host-bridge whitelist) and the kernel log."""
import glob
import json
import os
import subprocess

ACS_CAP_ID = 0x000D


def rd(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def acs_redirect(bdf):
    """True/False from the ACS control register's request/completion redirect bits, None without ACS."""
    try:
        with open(f"/sys/bus/pci/devices/{bdf}/config", "rb") as f:
            cfg = f.read(4096)
    except OSError:
        return None
    if len(cfg) < 0x104:
        return None
    offset = 0x100
    for _ in range(64):
        header = int.from_bytes(cfg[offset:offset + 4], "little")
        if header == 0 or header == 0xFFFFFFFF:
            return None
        if header & 0xFFFF == ACS_CAP_ID:
            ctrl = int.from_bytes(cfg[offset + 6:offset + 8], "little")
            return bool(ctrl & 0x0C)  # P2P request redirect (bit 2), completion redirect (bit 3)
        offset = header >> 20
        if offset < 0x100:
            return None
    return None


def cpu():
    info = {}
    for line in (rd("/proc/cpuinfo") or "").splitlines():
        if ":" in line:
            k, v = (s.strip() for s in line.split(":", 1))
            if k in ("vendor_id", "cpu family", "model name") and k not in info:
                info[k] = v
    return {"vendor": info.get("vendor_id"), "family": int(info.get("cpu family", "0")), "model": info.get("model name")}


out = {"kernel": os.uname().release, "cpu": cpu(), "host_bridge": None, "controllers": {}, "messages": []}
hb = "/sys/bus/pci/devices/0000:00:00.0"
if os.path.isdir(hb):
    out["host_bridge"] = {"vendor": rd(hb + "/vendor"), "device": rd(hb + "/device")}
for ctrl in sorted(glob.glob("/sys/class/nvme/nvme*")):
    dev = os.path.realpath(ctrl + "/device")
    chain = [p for p in dev.split("/") if p.count(":") == 2 and "." in p]  # BDFs from the root down
    entry = {
        "bdf": os.path.basename(dev),
        "path": chain,
        "acs_redirect": {b: acs_redirect(b) for b in chain[:-1]},
        "namespaces": sorted(os.path.basename(n) for n in glob.glob(ctrl + "/nvme*n*") if os.path.basename(n).startswith(os.path.basename(ctrl) + "n")),
        "p2pmem": None,
    }
    if os.path.isdir(dev + "/p2pmem"):
        entry["p2pmem"] = {"size": int(rd(dev + "/p2pmem/size")), "available": int(rd(dev + "/p2pmem/available")),
                           "published": rd(dev + "/p2pmem/published") == "1"}
    out["controllers"][os.path.basename(ctrl)] = entry
dmesg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
out["messages"] = [l for l in dmesg.splitlines() if "peer-to-peer" in l or "p2p" in l.lower() or "CMB" in l][-20:]
out["sqes_in_cmb"] = rd("/sys/module/nvme/parameters/use_cmb_sqes")
print(json.dumps(out))
