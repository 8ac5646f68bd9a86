#!/usr/bin/env python3
"""Guest side of nfs-p2p: O_DIRECT write and read of a file on an NFS mount from a buffer in P2P
memory (a CMB mapped from /sys/bus/pci/devices/BDF/p2pmem/allocate). Kernels whose NFS direct path
cannot take P2P pages refuse with EREMOTEIO; a transport without P2P support (soft-RoCE uses virtual
DMA) must refuse too. Where the I/O succeeds the data is verified. --fault ordinary-memory uses an
anonymous mapping instead of the CMB, so the I/O goes through and the lab must call it a FAIL.
Prints one JSON object."""
import argparse
import errno
import json
import mmap
import os
import sys


def attempt(fn):
    try:
        return {"ok": True, "bytes": fn(), "errno": None}
    except OSError as exc:
        return {"ok": False, "bytes": 0, "errno": errno.errorcode.get(exc.errno, str(exc.errno)), "message": exc.strerror}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--provider", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--size", type=int, default=256 << 10)
    ap.add_argument("--fault", choices=("none", "ordinary-memory"), default="none")
    args = ap.parse_args()
    if args.fault == "ordinary-memory":
        buf = mmap.mmap(-1, args.size)
    else:
        try:
            fd = os.open(f"/sys/bus/pci/devices/{args.provider}/p2pmem/allocate", os.O_RDWR)
            buf = mmap.mmap(fd, args.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            os.close(fd)
        except OSError as exc:
            print(json.dumps({"error": f"cannot map P2P memory of {args.provider}: {exc.strerror}"}))
            return 0
    want = bytes((i * 13 + 5) & 0xFF for i in range(args.size))
    buf[:] = want
    f = os.open(args.file, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    out = {"provider": args.provider, "file": args.file, "size": args.size, "fault": args.fault}
    out["write"] = attempt(lambda: os.pwritev(f, [buf], 0))
    if not out["write"]["ok"]:
        # Put the data there through ordinary memory so the read case tests reading, not writing.
        plain = mmap.mmap(-1, args.size)
        plain[:] = want
        os.pwritev(f, [plain], 0)
    buf[:] = b"\x5a" * args.size  # poisoned: a read that moved nothing cannot match
    out["read"] = attempt(lambda: os.preadv(f, [buf], 0))
    if out["read"]["ok"]:
        out["read"]["data_matches"] = bytes(buf[:args.size]) == want
    if out["write"]["ok"]:
        plain = mmap.mmap(-1, args.size)
        plain[:] = b"\xa5" * args.size
        os.preadv(f, [plain], 0)
        out["write"]["data_matches"] = bytes(plain[:args.size]) == want
    os.close(f)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
