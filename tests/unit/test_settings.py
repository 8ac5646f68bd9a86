"""Every LAB_* variable goes through settings(): read once, validated, one line when it is wrong."""

from __future__ import annotations

import pytest

from lab.errors import UsageError
from lab.settings import settings


def test_lab_blktests_is_read_like_lab_fstests(monkeypatch, tmp_path):
    """LAB_BLKTESTS was missing from the variables settings() reads: the blktests default was never set."""
    monkeypatch.setenv("LAB_BLKTESTS", str(tmp_path / "blktests"))
    monkeypatch.setenv("LAB_FSTESTS", str(tmp_path / "xfstests"))
    assert settings().blktests == str(tmp_path / "blktests") and settings().fstests == str(tmp_path / "xfstests")


def test_lab_cc_is_one_word(monkeypatch):
    monkeypatch.setenv("LAB_CC", "clang-19")
    assert settings().cc == "clang-19"
    monkeypatch.setenv("LAB_CC", "gcc; touch /tmp/x")
    with pytest.raises(UsageError, match="LAB_CC='gcc; touch /tmp/x': a compiler's name or path"):
        settings()
    monkeypatch.delenv("LAB_CC")
    assert settings().cc == "gcc"


def test_lab_kernels_must_be_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("LAB_KERNELS", str(tmp_path / "missing.toml"))
    with pytest.raises(UsageError, match="LAB_KERNELS=.*: no such file"):
        settings()
    named = tmp_path / "mine.toml"
    named.write_text("")
    monkeypatch.setenv("LAB_KERNELS", str(named))
    from lab.kernels.named import kernel_files

    assert named in kernel_files()
