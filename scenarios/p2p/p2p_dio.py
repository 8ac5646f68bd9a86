#!/usr/bin/env python3
"""Guest side of the P2P scenarios: O_DIRECT between NVMe namespaces through a buffer mapped from a
controller's CMB (/sys/bus/pci/devices/BDF/p2pmem/allocate), with data verification.

Every case stands alone: it writes its own fresh pattern to the source first, and poisons the
destination (the P2P buffer, or the device area and the buffer the check reads into) before the
transfer, so a DMA that moved nothing, or moved stale data from an earlier case, cannot verify.

Cases (each reported with its result, errno and the first differing byte if the data is wrong):
  read-into-p2p   O_DIRECT read of SRC into the P2P buffer
  write-from-p2p  O_DIRECT write of the P2P buffer to DST, checked by an ordinary O_DIRECT read of DST
  mixed-memory    one preadv whose segments are P2P memory and ordinary memory
  mixed-providers one preadv whose segments come from two providers (--provider2)
--fault skip-transfer reports every transfer as done without doing it: the checks must catch it.
Prints one JSON object.
"""
import argparse
import errno
import hashlib
import json
import mmap
import os
import sys

POISON = 0x5A


def pattern(size, seed):
    block = hashlib.sha256(seed.encode()).digest() * 8  # 256 bytes, different for every case
    return (block * (size // len(block) + 1))[:size]


def anon(size):
    return mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def p2p(bdf, size):
    fd = os.open(f"/sys/bus/pci/devices/{bdf}/p2pmem/allocate", os.O_RDWR)
    try:
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def first_difference(got, want):
    if got == want:
        return None
    for i in range(min(len(got), len(want))):
        if got[i] != want[i]:
            return {"offset": i, "got": got[i], "want": want[i], "poison": got[i] == POISON}
    return {"offset": min(len(got), len(want)), "got": None, "want": None}


class Cases:
    def __init__(self, args):
        self.args = args
        self.size = args.size
        self.src = os.open(args.src, os.O_RDWR | os.O_DIRECT)
        self.dst = os.open(args.dst, os.O_RDWR | os.O_DIRECT)
        self.staging = anon(self.size)

    def transfer(self, fn, nbytes):
        """Do the I/O, or with --fault skip-transfer claim it was done."""
        if self.args.fault == "skip-transfer":
            return nbytes
        return fn()

    def put(self, fd, data):
        """Known data on a device, through ordinary memory."""
        self.staging[: len(data)] = data
        os.pwrite(fd, self.staging[: len(data)], self.args.offset)
        os.fsync(fd)

    def attempt(self, fn, nbytes):
        try:
            return {"ok": True, "bytes": self.transfer(fn, nbytes), "errno": None}
        except OSError as exc:
            return {"ok": False, "bytes": 0, "errno": errno.errorcode.get(exc.errno, str(exc.errno)), "message": exc.strerror}

    def read_into(self, name, segments):
        """One preadv of SRC into `segments` (mmaps), checked against a fresh pattern."""
        total = sum(len(s) for s in segments)
        want = pattern(total, name)
        self.put(self.src, want)
        for seg in segments:
            seg[:] = bytes([POISON]) * len(seg)
        case = self.attempt(lambda: os.preadv(self.src, segments, self.args.offset), total)
        if case["ok"]:
            case["difference"] = first_difference(b"".join(bytes(s) for s in segments), want)
        return case

    def write_from(self, name, buf):
        want = pattern(self.size, name)
        buf[: self.size] = want
        self.put(self.dst, bytes([POISON]) * self.size)
        case = self.attempt(lambda: os.pwritev(self.dst, [buf], self.args.offset), self.size)
        if case["ok"]:
            check = anon(self.size)
            check[:] = bytes([POISON ^ 0xFF]) * self.size
            os.preadv(self.dst, [check], self.args.offset)
            case["difference"] = first_difference(bytes(check[: self.size]), want)
        return case


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--provider", required=True, help="BDF whose CMB backs the buffer")
    ap.add_argument("--provider2", help="second provider for the mixed-providers case")
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--size", type=int, default=1 << 20)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--fault", choices=("none", "skip-transfer"), default="none")
    args = ap.parse_args()
    out = {"provider": args.provider, "src": args.src, "dst": args.dst, "size": args.size, "fault": args.fault, "cases": {}}
    try:
        buf = p2p(args.provider, args.size)
    except OSError as exc:
        out["error"] = f"cannot map P2P memory of {args.provider}: {exc.strerror}"
        print(json.dumps(out))
        return 0
    c = Cases(args)
    half = args.size // 2
    out["cases"]["read-into-p2p"] = c.read_into("read-into-p2p", [buf])
    out["cases"]["write-from-p2p"] = c.write_from("write-from-p2p", buf)
    out["cases"]["mixed-memory"] = c.read_into("mixed-memory", [memoryview(buf)[:half], anon(half)])
    if args.provider2:
        try:
            other = p2p(args.provider2, half)
            out["cases"]["mixed-providers"] = c.read_into("mixed-providers", [memoryview(buf)[:half], other])
        except OSError as exc:
            out["cases"]["mixed-providers"] = {"ok": False, "bytes": 0, "errno": errno.errorcode.get(exc.errno),
                                               "message": f"map: {exc.strerror}"}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
