#!/usr/bin/env python3
"""Guest side of the P2P scenarios: O_DIRECT between NVMe namespaces through a buffer mapped from a
controller's CMB (/sys/bus/pci/devices/BDF/p2pmem/allocate), with data verification.

Cases (each reported with its result, errno and the first differing byte if the data is wrong):
  read-into-p2p   O_DIRECT read of SRC into the P2P buffer
  write-from-p2p  O_DIRECT write of that buffer to DST, then a normal O_DIRECT read of DST to verify
  mixed-memory    one preadv whose segments are P2P memory and ordinary memory
  mixed-providers one preadv whose segments come from two providers (--provider2)
Prints one JSON object.
"""
import argparse
import errno
import json
import mmap
import os
import sys

PAGE = 4096


def pattern(size, seed):
    block = bytes((i * 7 + seed) & 0xFF for i in range(256))
    return (block * (size // 256 + 1))[:size]


def anon(size):
    return mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def p2p(bdf, size):
    fd = os.open(f"/sys/bus/pci/devices/{bdf}/p2pmem/allocate", os.O_RDWR)
    try:
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def attempt(fn):
    try:
        n = fn()
        return {"ok": True, "bytes": n, "errno": None}
    except OSError as exc:
        return {"ok": False, "bytes": 0, "errno": errno.errorcode.get(exc.errno, str(exc.errno)), "message": exc.strerror}


def first_difference(got, want):
    if got == want:
        return None
    for i in range(len(want)):
        if got[i] != want[i]:
            return {"offset": i, "got": got[i], "want": want[i]}
    return {"offset": len(want), "got": None, "want": None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--provider", required=True, help="BDF whose CMB backs the buffer")
    ap.add_argument("--provider2", help="second provider for the mixed-providers case")
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--size", type=int, default=1 << 20)
    ap.add_argument("--offset", type=int, default=0)
    args = ap.parse_args()
    size = args.size
    out = {"provider": args.provider, "src": args.src, "dst": args.dst, "size": size, "cases": {}}
    src = os.open(args.src, os.O_RDWR | os.O_DIRECT)
    dst = os.open(args.dst, os.O_RDWR | os.O_DIRECT)
    want = pattern(size, 1)
    staging = anon(size)
    staging[:] = want
    os.pwrite(src, staging, args.offset)  # known data on SRC, through ordinary memory
    os.fsync(src)
    try:
        buf = p2p(args.provider, size)
    except OSError as exc:
        out["error"] = f"cannot map P2P memory of {args.provider}: {exc.strerror}"
        print(json.dumps(out))
        return 0

    case = attempt(lambda: os.preadv(src, [buf], args.offset))
    if case["ok"]:
        case["difference"] = first_difference(bytes(buf[:size]), want)
    out["cases"]["read-into-p2p"] = case

    staging[:] = b"\0" * size
    os.pwrite(dst, staging, args.offset)  # clear DST so a write that did nothing cannot pass
    case = attempt(lambda: os.pwritev(dst, [buf], args.offset))
    if case["ok"]:
        check = anon(size)
        os.preadv(dst, [check], args.offset)
        case["difference"] = first_difference(bytes(check[:size]), want)
    out["cases"]["write-from-p2p"] = case

    half = size // 2
    ordinary = anon(half)
    case = attempt(lambda: os.preadv(src, [memoryview(buf)[:half], ordinary], args.offset))
    if case["ok"]:
        case["difference"] = first_difference(bytes(buf[:half]) + bytes(ordinary[:half]), want)
    out["cases"]["mixed-memory"] = case

    if args.provider2:
        try:
            other = p2p(args.provider2, half)
            case = attempt(lambda: os.preadv(src, [memoryview(buf)[:half], other], args.offset))
            if case["ok"]:
                case["difference"] = first_difference(bytes(buf[:half]) + bytes(other[:half]), want)
        except OSError as exc:
            case = {"ok": False, "bytes": 0, "errno": errno.errorcode.get(exc.errno), "message": f"map: {exc.strerror}"}
        out["cases"]["mixed-providers"] = case
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
