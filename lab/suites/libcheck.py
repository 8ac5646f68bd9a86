"""Before a suite runs: do its programs find their shared libraries in the guest? A tree built on
another system (bookworm's libaio.so.1 in a trixie guest that has libaio.so.1t64) would otherwise
fail test by test with "error while loading shared libraries"."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Callable

from lab.errors import LabError

# ldd on the tree's executable ELF files (fstests has thousands of test scripts: one grep finds the
# programs among them; /bin/true first so that ldd heads every list with its file name even when
# one program is left). Then, for a missing library, what the guest has under the same stem.
LDD_SCRIPT = r"""cd {tree} || exit 97
find . -path ./results -prune -o -type f -perm -u+x -print0 |
    LC_ALL=C xargs -0 -r grep -laZ -m1 "$(printf '^\177ELF')" | xargs -0 -r ldd /bin/true 2>/dev/null
"""
_MISSING_RE = re.compile(r"^\s+(\S+) => not found")


@dataclass(frozen=True)
class MissingLibrary:
    program: str
    library: str


def parse_ldd(output: str) -> list[MissingLibrary]:
    """Missing libraries per program from `ldd FILE...` output (a "FILE:" line heads each file's list;
    a single file has no header)."""
    missing: list[MissingLibrary] = []
    program = "?"
    for line in output.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            program = line[:-1].removeprefix("./")
            continue
        m = _MISSING_RE.match(line)
        if m:
            missing.append(MissingLibrary(program, m.group(1)))
    return missing


def library_stem(library: str) -> str:
    """libaio.so.1 -> libaio.so: what to look for in the guest's packages."""
    return library.split(".so", 1)[0] + ".so"


def provider_line(dpkg_output: str) -> tuple[str, str] | None:
    """(package, library file name) from `dpkg -S` output, the first real library it lists."""
    for line in dpkg_output.splitlines():
        if ": " not in line:
            continue
        package, path = line.split(": ", 1)
        name = path.rsplit("/", 1)[-1]
        if ".so." in name or name.endswith(".so"):
            return package.split(":", 1)[0], name
    return None


def describe(missing: list[MissingLibrary], have: tuple[str, str] | None, tree: str, suite: str,
             built_with: str | None = None) -> str:
    """The one line a user reads: the first missing library, who needs it, and what to do."""
    first = missing[0]
    others = sorted({m.library for m in missing} - {first.library})
    more = f" (and {', '.join(others[:3])})" if others else ""
    count = len({m.program for m in missing})
    if have is not None:
        package, name = have
        cause = (f"the guest has {name} from package {package}: the tree was built against other libraries; "
                 f"build it for the guest with 'lab suite build {suite} --source SOURCE'")
    elif built_with is not None:
        cause = (f"the tree was built against package {built_with}, which the guest image lacks: add it to "
                 "images/lab-trixie/packages.txt")
    else:
        cause = (f"no package in the guest image ships {library_stem(first.library)}*: add the package that does to "
                 "images/lab-trixie/packages.txt, or rebuild the tree with 'lab suite build'")
    return f"{suite} tree {tree}: {first.program} needs {first.library}{more}, missing in the guest ({count} program(s)); {cause}"


def check_libraries(guest, tree: str, suite: str, package_of: Callable[[str], str | None] | None = None) -> list[MissingLibrary]:
    """Run ldd over the tree in the guest; raise LabError naming the first missing library (and,
    for a tree the lab built, the build root's package that ships it: package_of)."""
    res = guest.run(LDD_SCRIPT.format(tree=shlex.quote(tree)), timeout=300)
    missing = parse_ldd(res.stdout)
    if not missing:
        return []
    stem = library_stem(missing[0].library)
    dpkg = guest.run(f"dpkg -S {shlex.quote('*/' + stem + '*')} 2>/dev/null", timeout=60)
    built_with = package_of(missing[0].library) if package_of is not None else None
    raise LabError(describe(missing, provider_line(dpkg.stdout), tree, suite, built_with))
