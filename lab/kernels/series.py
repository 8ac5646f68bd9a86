"""Patch series as a reviewer receives them: an mbox saved from a mail client or b4 (cover letter,
replies and several versions mixed in), a directory of `git format-patch` files, or a lore
message-id fetched with b4. The result is the ordered list of patches `git am` will apply."""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import mailbox
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from lab.errors import LabError, UsageError

LOG = logging.getLogger(__name__)

# "[PATCH v3 02/11]", "[RFC PATCH 1/2]", "[PATCH net-next v2 3/4]", "[PATCH]"
_TAG_RE = re.compile(r"\[([^\]]*PATCH[^\]]*)\]", re.IGNORECASE)
_NUM_RE = re.compile(r"(\d+)\s*/\s*(\d+)")
_VER_RE = re.compile(r"\bv(\d+)\b", re.IGNORECASE)
_MSGID_RE = re.compile(r"^<?[^\s<>/@]+@[^\s<>/@]+>?$")


@dataclass(frozen=True)
class Patch:
    subject: str  # without the [PATCH ...] tag
    index: int  # 1-based position in the series (1 for a lone patch)
    total: int
    version: int
    raw: bytes  # the whole message, as git am reads it

    @property
    def title(self) -> str:
        return f"{self.index}/{self.total} {self.subject}"


@dataclass(frozen=True)
class Series:
    origin: str  # what the user gave
    patches: tuple[Patch, ...]
    picker: str = "lab"  # who chose the patches: "b4" (newest revision, trailers from replies) or the lab's own picker

    def digest(self) -> str:
        """Content identity: the patches' bytes in order (not the mbox's other messages)."""
        h = hashlib.sha256()
        for p in self.patches:
            h.update(hashlib.sha256(p.raw).digest())
        return h.hexdigest()

    def prefix(self, count: int) -> "Series":
        """The first `count` patches (what bisect builds step by step)."""
        return Series(f"{self.origin}[1..{count}]", self.patches[:count], self.picker)

    def mbox_bytes(self) -> bytes:
        return b"".join(_as_mbox_entry(p.raw) for p in self.patches)


def parse_subject(subject: str) -> tuple[str, int, int, int, bool] | None:
    """(subject without tag, index, total, version, is_reply) or None when it is not a patch mail."""
    subject = " ".join(subject.split())
    is_reply = bool(re.match(r"^(re|aw|fwd?)\s*:", subject, re.IGNORECASE))
    tag = _TAG_RE.search(subject)
    if not tag:
        return None
    inner = tag.group(1)
    num = _NUM_RE.search(inner)
    index, total = (int(num.group(1)), int(num.group(2))) if num else (1, 1)
    ver = _VER_RE.search(inner)
    version = int(ver.group(1)) if ver else 1
    title = subject[tag.end():].strip()
    return title, index, total, version, is_reply


def _has_diff(msg: Message) -> bool:
    parts = [msg] if not msg.is_multipart() else [p for p in msg.walk() if not p.is_multipart()]
    payloads = [p.get_payload(decode=True) for p in parts]
    body = b"".join(p for p in payloads if isinstance(p, bytes))
    return bool(body) and (b"\ndiff --git " in body or body.startswith(b"diff --git ") or b"\n--- a/" in body)


def select_patches(messages: list[tuple[Message, bytes]], origin: str) -> Series:
    """Keep the newest version's patches in order; drop the cover letter (0/N), replies and mails
    without a diff. A series with a missing or duplicated patch is an error naming it."""
    candidates: list[Patch] = []
    for msg, raw in messages:
        parsed = parse_subject(str(msg.get("Subject", "")))
        if not parsed:
            continue
        title, index, total, version, is_reply = parsed
        if is_reply or index == 0 or not _has_diff(msg):
            continue
        candidates.append(Patch(title, index, total, version, raw))
    if not candidates:
        raise UsageError(f"{origin}: no patches found (no mail with a [PATCH] subject and a diff)")
    newest = max(p.version for p in candidates)
    chosen = [p for p in candidates if p.version == newest]
    totals = {p.total for p in chosen}
    if len(totals) != 1:
        raise UsageError(f"{origin}: v{newest} patches disagree on the series length ({', '.join(map(str, sorted(totals)))})")
    total = totals.pop()
    by_index: dict[int, Patch] = {}
    for p in chosen:
        if p.index in by_index and by_index[p.index].raw != p.raw:
            raise UsageError(f"{origin}: two different mails for patch {p.index}/{total} of v{newest}")
        by_index[p.index] = p
    missing = [i for i in range(1, total + 1) if i not in by_index]
    if missing:
        raise UsageError(f"{origin}: v{newest} is incomplete, missing patch {', '.join(f'{i}/{total}' for i in missing)}")
    return Series(origin, tuple(by_index[i] for i in range(1, total + 1)))


def _as_mbox_entry(raw: bytes) -> bytes:
    if raw.startswith(b"From "):
        return raw if raw.endswith(b"\n") else raw + b"\n"
    # mboxrd quoting of body lines that look like separators
    body = re.sub(rb"(?m)^(>*From )", rb">\1", raw)
    return b"From lab@localhost Thu Jan  1 00:00:00 1970\n" + body + (b"" if body.endswith(b"\n") else b"\n") + b"\n"


def read_mbox(path: Path) -> list[tuple[Message, bytes]]:
    box = mailbox.mbox(str(path), create=False)
    try:
        out = []
        for key in box.keys():
            raw = box.get_bytes(key)
            out.append((email.message_from_bytes(raw, policy=email.policy.compat32), raw))
        return out
    finally:
        box.close()


def read_patch_dir(path: Path) -> list[tuple[Message, bytes]]:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".patch", ".diff", ".eml", ".mbox", ".mbx"))
    if not files:
        raise UsageError(f"{path}: no .patch files in this directory")
    out = []
    for f in files:
        raw = f.read_bytes()
        if raw.startswith(b"From ") and raw.count(b"\nFrom ") and len(read_mbox(f)) > 1:
            out.extend(read_mbox(f))
            continue
        body = raw.split(b"\n", 1)[1] if raw.startswith(b"From ") else raw
        msg = email.message_from_bytes(body, policy=email.policy.compat32)
        if not msg.get("Subject"):
            raise UsageError(f"{f}: not a git format-patch file (no Subject header)")
        out.append((msg, raw))
    return out


def _b4_am(args: list[str], work: Path, timeout: float) -> tuple[Path | None, str]:
    """`b4 -q am ARGS -n series -o WORK`: its one mbox of the newest revision (reviewers' trailers
    added), or None and b4's last line. Attestation looks up DKIM keys over the network: off, through
    git config in the environment (b4 reads git's), so a saved thread is read the same way offline."""
    env = os.environ | {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "b4.attestation-policy", "GIT_CONFIG_VALUE_0": "off"}
    try:
        res = subprocess.run(["b4", "-q", "am", *args, "-n", "series", "-o", str(work)], cwd=work, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, f"no answer within {timeout:.0f} s"
    mbox = work / "series.mbx"
    if res.returncode != 0 or not mbox.is_file():
        return None, (res.stderr.strip() or res.stdout.strip() or f"exit {res.returncode}").splitlines()[-1]
    return mbox, ""


def _fetch_msgid(msgid: str, work: Path) -> Path:
    """b4 fetches the thread from lore and writes the newest version's series as one mbox."""
    if not shutil.which("b4"):
        raise UsageError(f"{msgid}: looks like a message-id, which needs b4 (pip install b4, or the lab's 'series' extra)")
    mbox, why = _b4_am([msgid.strip("<>")], work, timeout=300)
    if mbox is None:
        raise LabError(f"b4 could not fetch {msgid}: {why}")
    return mbox


def _has_message_ids(messages: list[tuple[Message, bytes]]) -> bool:
    """A thread saved from a mail client or lore carries Message-Ids b4 can follow; `git format-patch`
    without --thread does not, and b4 would wait for one on stdin."""
    return any(msg.get("Message-Id") and parse_subject(str(msg.get("Subject", ""))) for msg, _ in messages)


def _b4_local(path: Path, work: Path) -> Path | None:
    """b4's pick of a local mbox, or None when b4 is not installed or cannot read this mbox (the lab's
    own picker is used then, with a warning naming b4's error)."""
    if not shutil.which("b4"):
        return None
    mbox, why = _b4_am(["-m", str(path.resolve())], work, timeout=120)
    if mbox is None:
        LOG.warning("b4 could not read %s (%s); using the lab's own patch picker", path, why[:200])
    return mbox


def load_series(spec: str) -> Series:
    """An mbox file, a directory of patches, or a message-id (through b4)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return select_patches(read_patch_dir(path), spec)
    if path.is_file():
        messages = read_mbox(path)
        if not messages:
            # A single format-patch file without the mbox "From " line.
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
            messages = [(msg, path.read_bytes())] if msg.get("Subject") else []
        if not messages:
            raise UsageError(f"{spec}: not an mbox (no messages)")
        if _has_message_ids(messages):
            with tempfile.TemporaryDirectory(prefix="lab-b4-") as tmp:
                picked = _b4_local(path, Path(tmp))
                if picked is not None:
                    chosen = select_patches(read_mbox(picked), spec)
                    return Series(spec, chosen.patches, "b4")
        return select_patches(messages, spec)
    if _MSGID_RE.match(spec):
        with tempfile.TemporaryDirectory(prefix="lab-b4-") as tmp:
            fetched = select_patches(read_mbox(_fetch_msgid(spec, Path(tmp))), spec)
            return Series(spec, fetched.patches, "b4")
    raise UsageError(f"series {spec!r}: no such file or directory, and not a message-id")
