"""An image's key follows the Debian package versions it installs: parsing apt's simulation and
dpkg's status, the key moving with one package, and resolving offline (a real apt against a mirror
that does not answer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab import image_versions
from lab.errors import LabError
from lab.image_versions import Resolved, changes, installed_versions, parse_simulation
from lab.images import Recipe, image_key

SIMULATION = """NOTE: This is only a simulation!
Inst gcc-14-base (14.2.0-19 Debian:13.8/stable [amd64])
Inst libc6 (2.41-12+deb13u5 Debian:13.8/stable [amd64]) []
Conf libc6 (2.41-12+deb13u5 Debian:13.8/stable [amd64])
Inst mawk (1.3.4.20250131-1 Debian:13.8/stable [amd64])
"""


def recipe(tmp_path: Path, mirror: str = "http://deb.debian.org/debian") -> Recipe:
    directory = tmp_path / "recipe"
    directory.mkdir(exist_ok=True)
    (directory / "recipe.toml").write_text(f'suite = "trixie"\nmirror = "{mirror}"\nsize = "1G"\n')
    (directory / "packages.txt").write_text("python3\n")
    return Recipe("t", directory, "trixie", mirror, "apt", 1 << 30, ("python3",))


def test_the_simulation_and_the_status_file_give_package_versions(tmp_path):
    assert parse_simulation(SIMULATION) == {"gcc-14-base": "14.2.0-19", "libc6": "2.41-12+deb13u5", "mawk": "1.3.4.20250131-1"}
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("Package: libc6\nStatus: install ok installed\nVersion: 2.41-12\n\n"
                      "Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\n"
                      "Package: mawk\nStatus: install ok installed\nVersion: 1.3.4\n")
    assert installed_versions(tmp_path) == {"libc6": "2.41-12", "mawk": "1.3.4"}


def test_the_image_key_moves_with_one_package_version(tmp_path):
    r = recipe(tmp_path)
    today = Resolved({"libc6": "2.41-12+deb13u5", "mawk": "1.3.4"}, "2026-12-07T00:00:00Z")
    same = Resolved({"mawk": "1.3.4", "libc6": "2.41-12+deb13u5"}, "2026-12-08T00:00:00Z")
    update = Resolved({"libc6": "2.41-12+deb13u6", "mawk": "1.3.4"}, "2026-12-08T00:00:00Z")
    assert image_key(r, today) == image_key(r, same)  # when it was resolved is not what it is
    assert image_key(r, today) != image_key(r, update)
    assert changes(today.versions, {**update.versions, "new": "1"}) == ["libc6 2.41-12+deb13u5 -> 2.41-12+deb13u6", "+new 1"]
    assert changes({"old": "2"}, {}) == ["-old 2"]


def test_offline_with_no_earlier_resolution_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(LabError, match=r"cannot resolve its packages from http://127.0.0.1:9/debian trixie .* never resolved before"):
        image_versions.resolve(recipe(tmp_path, "http://127.0.0.1:9/debian"))


def test_offline_the_last_resolution_stands_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))
    r = recipe(tmp_path, "http://127.0.0.1:9/debian")
    saved = tmp_path / "cache/images/t.resolved.json"
    saved.parent.mkdir(parents=True)
    saved.write_text(json.dumps({"recipe_key": r.key, "lists_time": 1.0, "resolved_at": "2026-12-01T00:00:00Z",
                                 "versions": {"libc6": "2.41-12"}}))
    got = image_versions.resolve(r)
    assert got.versions == {"libc6": "2.41-12"} and got.resolved_at == "2026-12-01T00:00:00Z"
    assert "package lists not updated" in got.note
    # A resolution made for other recipe files does not count.
    (r.directory / "customize.sh").write_text("#!/bin/sh\n")
    with pytest.raises(LabError, match="never resolved before"):
        image_versions.resolve(r)


def test_lab_image_build_offline_says_so_in_one_line(tmp_path):
    """The command a user runs on the shipped recipe, with Debian out of reach (a proxy that does
    not answer) and an empty cache: one line, no traceback, nothing built."""
    res = subprocess.run([sys.executable, "-m", "lab", "image", "build", "lab-trixie"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LAB_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path),
                              "http_proxy": "http://127.0.0.1:9", "LAB_RESULTS": str(tmp_path / "results")})
    errors = [line for line in res.stderr.splitlines() if line.startswith("lab: error")]
    assert res.returncode != 0 and len(errors) == 1 and "never resolved before" in errors[0], res.stderr
    assert "Traceback" not in res.stderr and not list((tmp_path / "cache").glob("images/*.img"))


def test_the_image_list_shows_images_not_resolutions(tmp_path, monkeypatch):
    from lab.images import list_images

    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    (tmp_path / "images").mkdir()
    (tmp_path / "images/t-0123456789abcdef.json").write_text(json.dumps({"recipe": "t", "image_key": "0123456789abcdef"}))
    (tmp_path / "images/t.resolved.json").write_text(json.dumps({"recipe_key": "x", "versions": {"libc6": "2.41"}}))
    assert [i["recipe"] for i in list_images()] == ["t"]
