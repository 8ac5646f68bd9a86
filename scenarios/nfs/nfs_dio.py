#!/usr/bin/env python3
"""Guest side of nfs-dio: O_DIRECT writes and reads on an NFS mount over a matrix of user-buffer
alignments, I/O sizes, file offsets and vectored segments, each verified by a second path.

For every case: write a fresh pattern with pwritev from buffers starting at the given intra-page
offsets, check the returned byte count, read it back with a fresh O_DIRECT preadv into differently
aligned buffers that were poisoned first, and compare. Each case reports the sha256 of what it
wrote, which the lab compares with a checksum of the same bytes computed on the server
(scenarios/nfs/checksum.py). Any mismatch names the case, the file offset and the first differing
byte. --buffered does the same through the page cache (written, fsynced, dropped from the cache,
read back). --list prints the case names and does nothing else. Prints one JSON object.
"""
import argparse
import hashlib
import json
import mmap
import os
import sys
import time

PAGE = 4096
ALIGNS = {"page": 0, "512": 512, "100": 100, "odd": 4093}
SIZES = {"sub-page": 1000, "page": 4096, "multi-page": 5 * 4096 + 300, "folio-cross": 65536 + 4097, "1M": 1 << 20}
FILE_OFFSETS = {"aligned": 0, "unaligned": 12345}
VECTORS = {"3seg": [(100, 1000), (4000, 5000), (0, 4096)], "5seg": [(7, 1), (511, 513), (100, 8192), (2048, 4096), (3, 65536)]}


def pattern(n, seed):
    h = hashlib.sha256(seed.encode()).digest()
    block = (h * (4096 // len(h) + 1))[:4093]  # odd period so shifted copies never match by accident
    return (block * (n // len(block) + 1))[:n]


POISON = 0xA5


def buffers(segments, poison=False):
    """[(intra-page offset, length)] -> memoryviews into anonymous mappings at those offsets."""
    views = []
    for off, length in segments:
        m = mmap.mmap(-1, off + length + PAGE)
        view = memoryview(m)[off:off + length]
        if poison:
            view[:] = bytes([POISON]) * length
        views.append((m, view))
    return views


def pread_vec(fd, segments, pos):
    bufs = buffers(segments, poison=True)
    n = os.preadv(fd, [v for _, v in bufs], pos)
    return n, b"".join(bytes(v) for _, v in bufs)


def first_diff(got, want):
    if got == want:
        return None
    for i in range(min(len(got), len(want))):
        if got[i] != want[i]:
            return {"index": i, "got": got[i], "want": want[i]}
    return {"index": min(len(got), len(want)), "got": "short", "want": len(want)}


def cases():
    for a, aoff in ALIGNS.items():
        for s, size in SIZES.items():
            for f, foff in FILE_OFFSETS.items():
                yield f"align={a} size={s} off={f}", [(aoff, size)], foff
    for v, segs in VECTORS.items():
        for f, foff in FILE_OFFSETS.items():
            yield f"vector={v} off={f}", segs, foff


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir")
    ap.add_argument("--only", help="run the cases whose name contains this")
    ap.add_argument("--stop-before-verify", help="pause file: wait until it is removed before verifying (fault injection)")
    ap.add_argument("--list", action="store_true", help="print the case names")
    ap.add_argument("--file", default="nfs-dio.dat", help="data file name in --dir")
    ap.add_argument("--buffered", action="store_true", help="buffered I/O instead of O_DIRECT")
    args = ap.parse_args()
    if args.list:
        print(json.dumps([name for name, _, _ in cases()]))
        return 0
    if not args.dir:
        ap.error("--dir is required")
    out = {"cases": [], "bytes": 0, "seconds": 0.0}
    start = time.monotonic()
    path = os.path.join(args.dir, args.file)
    direct = 0 if args.buffered else os.O_DIRECT
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | direct, 0o644)
    pos_base = 0
    written = []
    for name, segs, foff in cases():
        if args.only and args.only not in name:
            continue
        total = sum(l for _, l in segs)
        pos = pos_base + foff
        pos_base += ((foff + total) // (1 << 20) + 2) << 20  # cases never overlap
        data = pattern(total, name)
        bufs = buffers(segs)
        at = 0
        for _, v in bufs:
            v[:] = data[at:at + len(v)]
            at += len(v)
        case = {"name": name, "pos": pos, "length": total, "sha256": hashlib.sha256(data).hexdigest()}
        try:
            n = os.pwritev(fd, [v for _, v in bufs], pos)
            case["written"] = n
            if n != total:
                case["error"] = f"short write {n} of {total}"
        except OSError as exc:
            case["error"] = f"write: {exc.strerror}"
        written.append((case, segs, data))
        out["cases"].append(case)
        out["bytes"] += total
    if args.stop_before_verify:
        open(args.stop_before_verify, "w").close()
        while os.path.exists(args.stop_before_verify):
            time.sleep(0.1)
    if args.buffered:
        # The read-back must come from the file system, not from the pages just written.
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    fd = os.open(path, os.O_RDONLY | direct)
    for case, segs, data in written:
        if "error" in case:
            continue
        # Read back into buffers aligned differently from the write's.
        shifted = [((off + 1357) % PAGE, length) for off, length in segs]
        try:
            n, got = pread_vec(fd, shifted, case["pos"])
            diff = first_diff(got[:n], data)
            if n != len(data):
                case["error"] = f"short read {n} of {len(data)}"
            elif diff:
                case["error"] = f"data differs at file offset {case['pos'] + diff['index']} (byte {diff['index']} of the case): got {diff['got']}, want {diff['want']}"
        except OSError as exc:
            case["error"] = f"read: {exc.strerror}"
    os.close(fd)
    out["seconds"] = round(time.monotonic() - start, 3)
    out["mib_per_s"] = round(2 * out["bytes"] / (1 << 20) / max(out["seconds"], 1e-6), 2)
    out["path"] = path
    out["mode"] = "buffered" if args.buffered else "direct"
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
