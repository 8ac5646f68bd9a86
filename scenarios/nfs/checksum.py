#!/usr/bin/env python3
"""Server side of nfs-dio: the sha256 of byte ranges of a file, read from the server's own file
system (not through NFS), so the client's read-back is not the only witness of what was written.
Reads a JSON list of {"name", "pos", "length"} and prints one JSON object {"cases": {name: sha256}}."""
import argparse
import hashlib
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True)
    ap.add_argument("--cases", required=True, help="JSON file: [{name, pos, length}]")
    args = ap.parse_args()
    with open(args.cases) as f:
        wanted = json.load(f)
    out = {"file": args.file, "size": os.path.getsize(args.file), "cases": {}}
    with open(args.file, "rb") as f:
        for case in wanted:
            f.seek(case["pos"])
            data = f.read(case["length"])
            out["cases"][case["name"]] = hashlib.sha256(data).hexdigest() if len(data) == case["length"] else f"short:{len(data)}"
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
