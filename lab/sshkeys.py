"""The lab's own SSH key pair: generated on first use, 0600, used for key-only root login."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lab.paths import cache_dir

LOG = logging.getLogger(__name__)


def key_paths() -> tuple[Path, Path]:
    directory = cache_dir() / "ssh"
    return directory / "id_ed25519", directory / "id_ed25519.pub"


def ensure_key() -> tuple[Path, str]:
    """(private key path, base64 blob of the public key)."""
    private, public = key_paths()
    private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(private.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not private.exists() or not public.exists():
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
            pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            tmp = private.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            os.replace(tmp, private)
            public.write_bytes(pub + b" lab\n")
    os.chmod(private, 0o600)
    blob = public.read_text().split()[1]
    return private, blob
