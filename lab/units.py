"""Sizes and digests, for every module that reads a size or hashes a file: one grammar for sizes
("4096", "64K", "512M", "1G", "2T", with an optional "B" or "iB"; binary units) and one streaming
SHA-256 of a file."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

LOG = logging.getLogger(__name__)

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: object) -> int:
    """'1G', '64K', '4096' or an int -> bytes (binary units). A pydantic BeforeValidator: ValueError."""
    if isinstance(value, bool):
        raise ValueError("a size is a number with an optional K/M/G/T suffix")
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size (examples: 4096, 64K, 512M, 1G)")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
