"""Series parsing: mboxes as reviewers save them (cover letter, replies, two versions), patch
directories, and the errors for incomplete series."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.kernels.series import load_series, parse_subject


def mail(subject: str, body: str, msgid: str, date: str = "Mon, 1 Jun 2026 10:00:00 +0000") -> str:
    return (f"From lab Mon Jun  1 10:00:00 2026\nFrom: Dev <dev@example.org>\nDate: {date}\n"
            f"Subject: {subject}\nMessage-Id: <{msgid}@example.org>\n\n{body}\n\n")


def diff(path: str, line: str) -> str:
    return (f"commit message\n\nSigned-off-by: Dev <dev@example.org>\n---\n"
            f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-old\n+{line}\n")


def test_patch_subjects_give_title_index_count_and_revision() -> None:
    assert parse_subject("[PATCH v3 02/11] nfs: pin pages") == ("nfs: pin pages", 2, 11, 3, False)
    assert parse_subject("[RFC PATCH net-next 1/2] x") == ("x", 1, 2, 1, False)
    assert parse_subject("[PATCH] lone fix") == ("lone fix", 1, 1, 1, False)
    assert parse_subject("Re: [PATCH v2 1/3] y")[4] is True
    assert parse_subject("just a mail") is None


def test_mbox_with_cover_replies_and_two_versions(tmp_path: Path) -> None:
    box = tmp_path / "thread.mbox"
    box.write_text(
        mail("[PATCH 0/2] the series", "cover letter, no diff", "c1")
        + mail("[PATCH 2/2] second v1", diff("b.c", "v1b"), "p2")
        + mail("[PATCH 1/2] first v1", diff("a.c", "v1a"), "p1")
        + mail("[PATCH v2 0/2] the series", "cover v2", "c2")
        + mail("Re: [PATCH v2 1/2] first", "> quoted\nlooks good\n" + diff("a.c", "review-diff"), "r1")
        + mail("[PATCH v2 2/2] second", diff("b.c", "v2b"), "q2")
        + mail("[PATCH v2 1/2] first", diff("a.c", "v2a"), "q1")
    )
    series = load_series(str(box))
    assert [p.title for p in series.patches] == ["1/2 first", "2/2 second"]
    assert all(p.version == 2 for p in series.patches)
    assert b"+v2a" in series.patches[0].raw and b"+v2b" in series.patches[1].raw
    # The rewritten mbox holds exactly the chosen patches, in order.
    again = tmp_path / "again.mbox"
    again.write_bytes(series.mbox_bytes())
    assert [p.title for p in load_series(str(again)).patches] == ["1/2 first", "2/2 second"]
    assert load_series(str(again)).digest() == series.digest()


def test_digest_changes_with_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.mbox", tmp_path / "b.mbox"
    a.write_text(mail("[PATCH] fix", diff("a.c", "one"), "x"))
    b.write_text(mail("[PATCH] fix", diff("a.c", "two"), "x"))
    assert load_series(str(a)).digest() != load_series(str(b)).digest()
    assert load_series(str(a)).digest() == load_series(str(a)).digest()


def test_missing_patch_is_named(tmp_path: Path) -> None:
    box = tmp_path / "gap.mbox"
    box.write_text(mail("[PATCH v2 1/3] a", diff("a.c", "a"), "1") + mail("[PATCH v2 3/3] c", diff("c.c", "c"), "3"))
    with pytest.raises(UsageError, match=r"v2 is incomplete, missing patch 2/3"):
        load_series(str(box))


def test_an_mbox_without_patches_is_refused(tmp_path: Path) -> None:
    box = tmp_path / "chat.mbox"
    box.write_text(mail("hello", "no patch here", "1"))
    with pytest.raises(UsageError, match="no patches found"):
        load_series(str(box))


def test_patch_directory(tmp_path: Path) -> None:
    d = tmp_path / "outgoing"
    d.mkdir()
    (d / "0000-cover-letter.patch").write_text(mail("[PATCH 0/2] cover", "*** BLURB HERE ***", "0"))
    (d / "0001-first.patch").write_text(mail("[PATCH 1/2] first", diff("a.c", "a"), "1"))
    (d / "0002-second.patch").write_text(mail("[PATCH 2/2] second", diff("b.c", "b"), "2"))
    (d / "notes.txt").write_text("ignored")
    series = load_series(str(d))
    assert [p.title for p in series.patches] == ["1/2 first", "2/2 second"]
    assert [p.title for p in series.prefix(1).patches] == ["1/2 first"]


def test_nonexistent_series() -> None:
    with pytest.raises(UsageError, match="no such file or directory"):
        load_series("/nonexistent/x.mbox")


def test_am_failure_names_patch_and_file() -> None:
    from lab.kernels.source import describe_am_failure

    out = ("Checking patch init/main.c...\nerror: while searching for:\nno such line\n"
           "error: patch failed: init/main.c:1\nerror: init/main.c: patch does not apply\n"
           "error: sha1 information is lacking or useless (init/main.c).\n"
           "Patch failed at 0002 init: change a line\nhint: Use 'git am --show-current-patch=diff'\n")
    assert describe_am_failure(out) == (2, "init: change a line", "init/main.c (hunk at line 1 does not match)")
    assert describe_am_failure("error: fs/x.c: does not exist in index\nPatch failed at 0001 x")[2] == "fs/x.c (file does not exist)"
    assert describe_am_failure("Patch failed at 0003 y")[:2] == (3, "y")


def test_ccache_hit_rate_of_one_build():
    from lab.kernels.build import ccache_delta, parse_ccache_stats

    before = parse_ccache_stats("cache_miss\t100\ndirect_cache_hit\t10\npreprocessed_cache_hit\t0\nlocal_storage_hit\t9\n")
    after = parse_ccache_stats("cache_miss\t110\ndirect_cache_hit\t100\npreprocessed_cache_hit\t0\n")
    assert ccache_delta(before, after) == {"hits": 90, "misses": 10, "hit_rate": 90.0}
    assert ccache_delta(before, before) is None  # nothing compiled
    assert ccache_delta({}, after) is None  # no ccache


def threaded(subject: str, body: str, msgid: str, parent: str | None = None, sender: str = "Dev <dev@example.org>") -> str:
    reply = f"In-Reply-To: <{parent}@example.org>\nReferences: <{parent}@example.org>\n" if parent else ""
    return (f"From lab Mon Jun  1 10:00:00 2026\nFrom: {sender}\nDate: Mon, 1 Jun 2026 10:00:00 +0000\n"
            f"Subject: {subject}\nMessage-Id: <{msgid}@example.org>\n{reply}\n{body}\n\n")


def test_a_saved_thread_goes_through_b4_which_adds_the_reviewers_trailers(tmp_path: Path, monkeypatch) -> None:
    """A thread saved from a mail client (Message-Ids, replies): b4 picks the patches and adds a
    reviewer's Reviewed-by from a reply; format-patch output without Message-Ids stays with the lab's picker."""
    import shutil
    import sys

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}")
    assert shutil.which("b4"), "b4 is in the test extras"
    box = tmp_path / "thread.mbox"
    box.write_text(
        threaded("[PATCH 0/2] the series", "cover letter", "c")
        + threaded("[PATCH 1/2] first", diff("a.c", "one"), "p1", "c")
        + threaded("[PATCH 2/2] second", diff("b.c", "two"), "p2", "c")
        + threaded("Re: [PATCH 2/2] second", "> quoted\n\nReviewed-by: Rev Iewer <rev@example.org>", "r2", "p2",
                   "Rev Iewer <rev@example.org>"))
    series = load_series(str(box))
    assert series.picker == "b4"
    assert [p.title for p in series.patches] == ["1/2 first", "2/2 second"]
    assert b"Reviewed-by: Rev Iewer <rev@example.org>" in series.patches[1].raw
    assert b"Reviewed-by" not in series.patches[0].raw
    plain = tmp_path / "plain.mbox"
    plain.write_text("From lab Mon Jun  1 10:00:00 2026\nFrom: Dev <dev@example.org>\nSubject: [PATCH] fix\n\n" + diff("a.c", "x"))
    assert load_series(str(plain)).picker == "lab"


def test_a_message_id_goes_to_b4_with_arguments_it_accepts(monkeypatch) -> None:
    """b4's -q is a global option (`b4 -q am`, not `b4 am -q`, which b4 refused as an unrecognized
    argument, so no message-id ever reached lore). A made-up id fails as a fetch, whether lore is
    reachable (no such thread) or not (this machine), never as bad arguments."""
    import os
    import sys

    from lab.errors import LabError

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    with pytest.raises(LabError) as err:
        load_series("<20261207-no-such-thread-lab-test@example.org>")
    message = str(err.value)
    assert message.startswith("b4 could not fetch <20261207-no-such-thread-lab-test@example.org>: ")
    assert "unrecognized arguments" not in message and "usage:" not in message
