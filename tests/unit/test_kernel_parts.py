"""Pure parts of kernel handling: module load order, ELF notes, bzImage headers."""

import struct

import pytest

from lab.errors import UsageError
from lab.kernels.initramfs import chain_orders, load_order, module_name, parse_modules_dep
from lab.kernels.kernel import Kernel
from lab.kernels.pvh import has_pvh_note

DEP = """kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
"""


def test_module_names_drop_compression_and_use_underscores():
    assert module_name("kernel/drivers/block/virtio_blk.ko.xz") == "virtio_blk"
    assert module_name("kernel/x/crc32c-generic.ko.zst") == "crc32c_generic"


def test_load_order_puts_dependencies_first(tmp_path):
    (tmp_path / "modules.dep").write_text(DEP)
    order = load_order(tmp_path, ("virtio_blk", "ext4", "not_a_module"))
    assert order[0] == "kernel/drivers/block/virtio_blk.ko.xz"
    assert order[-1] == "kernel/fs/ext4/ext4.ko.xz"
    assert set(order[1:-1]) == {"kernel/lib/crc16.ko.xz", "kernel/fs/mbcache.ko.xz", "kernel/fs/jbd2/jbd2.ko.xz"}
    assert parse_modules_dep(DEP)["crc32c_generic"] == ["kernel/crypto/crc32c_generic.ko.xz"]


def test_chains_load_side_by_side_each_module_once(tmp_path):
    (tmp_path / "modules.dep").write_text(DEP)
    chains = chain_orders(tmp_path, (("virtio_blk",), ("crc32c_generic", "ext4"), ("virtio_net",), ("jbd2", "absent")))
    assert chains[0] == ["kernel/drivers/block/virtio_blk.ko.xz"]
    assert chains[1][0] == "kernel/crypto/crc32c_generic.ko.xz" and chains[1][-1] == "kernel/fs/ext4/ext4.ko.xz"
    assert chains[2] == ["kernel/net/core/failover.ko.xz", "kernel/drivers/net/net_failover.ko.xz",
                         "kernel/drivers/net/virtio_net.ko.xz"]
    assert len(chains) == 3  # jbd2 came with ext4's chain; a chain with nothing left to load is dropped
    assert chain_orders(tmp_path / "none", (("ext4",),)) == []  # a built kernel: no modules.dep


def _elf_with_note(name: bytes, ntype: int) -> bytes:
    desc = b"\0" * 4
    note = struct.pack("<III", len(name) + 1, len(desc), ntype) + name + b"\0" * (4 - len(name) % 4 if len(name) % 4 else 4)
    note = struct.pack("<III", len(name) + 1, len(desc), ntype) + (name + b"\0").ljust((len(name) + 4) & ~3, b"\0") + desc
    ehdr = bytearray(64)
    ehdr[:4] = b"\x7fELF"
    ehdr[4] = 2
    struct.pack_into("<Q", ehdr, 0x20, 64)  # phoff
    struct.pack_into("<HH", ehdr, 0x36, 56, 1)  # phentsize, phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(note), len(note), 4)
    return bytes(ehdr) + phdr + note


def test_pvh_note_detection():
    assert has_pvh_note(_elf_with_note(b"Xen", 18))
    assert not has_pvh_note(_elf_with_note(b"Xen", 17))
    assert not has_pvh_note(_elf_with_note(b"GNU", 18))
    assert not has_pvh_note(b"not an elf")


def test_non_bzimage_is_refused(tmp_path):
    f = tmp_path / "vmlinuz"
    f.write_bytes(b"\0" * 4096)
    with pytest.raises(UsageError, match="not an x86 bzImage"):
        Kernel.from_file(f)
    with pytest.raises(UsageError, match="does not exist"):
        Kernel.from_file(tmp_path / "missing")
