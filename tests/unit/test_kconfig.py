"""Config fragments, the final-config check and its explanation of unmet dependencies, and the
cache keys of built kernels."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.kernels import build, kconfig


KCONFIG = """\
config PCI
	bool "PCI support"

config ZONE_DEVICE
	bool "Device memory"
	depends on MEMORY_HOTPLUG
	depends on MEMORY_HOTREMOVE

if PCI

config PCI_P2PDMA
	bool "PCI peer-to-peer transfer support"
	depends on ZONE_DEVICE
	depends on 64BIT # the kernel says why
	select GENERIC_ALLOCATOR
	help
	  depends on NOTHING (help text is not syntax)

endif

config FOO
	tristate "foo"
"""


def fake_tree(tmp_path: Path) -> Path:
    (tmp_path / "Kconfig").write_text(KCONFIG)
    return tmp_path


def test_parse_and_merge_later_wins(tmp_path: Path) -> None:
    a = kconfig.Fragment("a", "CONFIG_X=y\n# CONFIG_Y is not set\n# a comment\nCONFIG_S=\"text\"\n")
    b = kconfig.Fragment("b", "CONFIG_X=n\nCONFIG_Y=y\n")
    merged = kconfig.merge([a, b])
    assert merged == {"CONFIG_X": "n", "CONFIG_Y": "y", "CONFIG_S": '"text"'}
    assert "# CONFIG_X is not set" in kconfig.render_allconfig(merged)


def test_malformed_fragment_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.config"
    bad.write_text("CONFIG_OK=y\nNFS=y\n")
    with pytest.raises(UsageError, match=r"bad.config:2: not a kernel config line"):
        kconfig.fragment(str(bad))


def test_unknown_fragment_name_lists_the_shipped_ones() -> None:
    with pytest.raises(UsageError, match=r"no such file \(the lab's fragments: .*nvme-pi"):
        kconfig.fragment("no-such-fragment")


def test_shipped_fragments_parse() -> None:
    merged = kconfig.merge(kconfig.default_fragments())
    for option in ("CONFIG_PCI_P2PDMA", "CONFIG_BLK_DEV_INTEGRITY", "CONFIG_XFS_FS", "CONFIG_SUNRPC_XPRT_RDMA",
                   "CONFIG_RDMA_RXE", "CONFIG_RDMA_SIW", "CONFIG_IO_URING", "CONFIG_VIRTIO_BLK", "CONFIG_9P_FS", "CONFIG_PVH"):
        assert merged[option] == "y", option
    # The extra one blktests' fabrics tests need, by name as --config takes it, not in the defaults.
    nvmet = kconfig.merge([kconfig.fragment("nvmet")])
    assert all(nvmet[o] == "y" for o in ("CONFIG_NVME_TARGET_TCP", "CONFIG_NVME_TARGET_RDMA", "CONFIG_NVME_RDMA"))
    assert "CONFIG_NVME_TARGET" not in merged


def test_dependencies_include_enclosing_if_and_skip_help() -> None:
    deps = kconfig.kconfig_dependencies(KCONFIG, "CONFIG_PCI_P2PDMA")
    assert deps == ["PCI", "ZONE_DEVICE", "64BIT"]
    assert kconfig.kconfig_dependencies(KCONFIG, "FOO") == []


def test_option_that_cannot_be_enabled_is_explained(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    requested = {"CONFIG_PCI_P2PDMA": "y", "CONFIG_PCI": "y", "CONFIG_NFS_V4_1": "y", "CONFIG_FOO": "n"}
    final = {"CONFIG_PCI": "y", "CONFIG_64BIT": "y", "CONFIG_MEMORY_HOTPLUG": "y"}
    problems = kconfig.check(requested, final, tree)
    assert problems == [
        "CONFIG_PCI_P2PDMA=y did not stick (got unset): depends on PCI; depends on ZONE_DEVICE [ZONE_DEVICE=n]; "
        "depends on 64BIT",
        "CONFIG_NFS_V4_1=y: no such option in this kernel tree",
    ]


def test_all_requested_present_means_no_problems(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    assert kconfig.check({"CONFIG_PCI": "y", "CONFIG_FOO": "n"}, {"CONFIG_PCI": "y"}, tree) == []
    assert kconfig.unmet({"CONFIG_FOO": "n"}, {"CONFIG_FOO": "y"}) == [("CONFIG_FOO", "n", "y")]


def test_cache_keys_depend_on_every_input() -> None:
    base = ("debian:linux-source-7.3=7.3.4-1~bpo13+1", "", "CONFIG_A=y\n", "gcc (Debian 12.2.0-14) 12.2.0")
    key = build.kernel_key(*base)
    assert key == build.kernel_key(*base)
    for i, changed in enumerate(("tarball:abc", "series-sha", "CONFIG_A=n\n", "gcc 13")):
        other = list(base)
        other[i] = changed
        assert build.kernel_key(*other) != key, i
    # the request key and the kernel key never collide for the same inputs
    assert build.request_key(*base) != key


def test_build_references_parse_and_bad_ones_say_which_key() -> None:
    req = build.parse_build_ref("build:base=linux-source-7.3,series=x.mbox,config=a.config+b.config,config=c")
    assert req == build.BuildRequest(source="linux-source-7.3", series="x.mbox", configs=("a.config", "b.config", "c"))
    assert build.is_build_key("build:0123abcd") and not build.is_build_key("build:source=x")
    for bad, msg in (("build:series=x", "exactly one source"), ("build:source=a,colour=red", "unknown key"),
                     ("build:source=a,patches=two", "takes a number"), ("build:source", "not key=value")):
        with pytest.raises(UsageError, match=msg):
            build.parse_build_ref(bad)


def test_remove_built_kernel_and_its_aliases(tmp_path: Path, monkeypatch) -> None:
    import json

    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    entry = build.kernels_root() / "build-0123456789abcdef"
    entry.mkdir(parents=True)
    (entry / "vmlinuz").write_bytes(b"x")
    (entry / "kernel.json").write_text(json.dumps({"ref": "build:0123456789abcdef", "release": "7.3.4-lab", "sha256": "0"}))
    (build.kernels_root() / "requests" / "a").write_text(entry.name)
    (build.kernels_root() / "requests" / "b").write_text("build-other")
    assert build.find("build:01234567").release == "7.3.4-lab"
    removed, aliases = build.remove("build:01234567")
    assert removed == entry and aliases == 1 and not entry.exists()
    assert [p.name for p in (build.kernels_root() / "requests").iterdir()] == ["b"]
    with pytest.raises(UsageError, match="no such built kernel"):
        build.find("build:01234567")
