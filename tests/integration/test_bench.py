"""lab bench dio, small: one block size and direction, one short run per arrangement, on debian:7.3
in a real guest. Every arrangement is proven by the bounce kprobe before it is measured."""

from __future__ import annotations

from lab.scenarios import framework
from lab.scenarios.options import validate


def test_dio_bench_measures_zero_copy_and_bounce_each_proven():
    cls = framework.get("dio-bench")
    options = validate(cls.Options, {"kernels": ["debian:7.3"], "runs": 1, "seconds": 1, "size_mib": 64,
                                     "directions": ["write"], "blocks": ["64k"]})
    outcome = framework.run(cls, options)
    section = outcome.results["subruns"]["debian-7.3"]
    assert section["verdict"] == "PASS", section["reason"]
    assert section["bounce_in_kernel"] is True
    for arrangement in ("zero-copy", "bounce", "pi-bounce"):
        case = section["cases"][f"{arrangement}-write-64k"]
        assert case["verdict"] == "PASS" and case["bandwidth"]["median"] > 0, case
    ratio = section["ratios"]["write-64k"]
    assert ratio["bounce"] is not None and 0 < ratio["bounce"] < 5, ratio
    assert "bounce/zc" in outcome.table and "seed 003" in outcome.table


def test_bench_boot_measured_through_the_figures_script(tmp_path):
    """The benchmarks' small real case in CI, the way the docs' figures are made: the figures script
    runs `lab bench boot --runs 1` as a user types it and records its output with the date, the
    machine and the commit; the page is rendered from that record."""
    import json
    import re
    import subprocess
    import sys

    listing = tmp_path / "figures.toml"
    listing.write_text('[[figure]]\nname = "boot"\nwhat = "first guest command"\n'
                       'command = ["bench", "boot", "--runs", "1", "--kernel", "debian:7.3"]\n')
    record = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, "-m", "lab.figures", "measure", "boot", "--list", str(listing), "--record", str(record)],
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    boot = json.loads(record.read_text())["boot"]
    out = "\n".join(boot["output"])
    m = re.search(r"first guest command: lab ([\d.]+) s \(median of 1\), bare QEMU ([\d.]+) s", out)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, out
    assert "boot phases, median of 1 run(s):" in out
    assert boot["command"] == "lab bench boot --runs 1 --kernel debian:7.3" and boot["machine"]["cpus"] >= 1 and boot["commit"]
    page = (tmp_path / "figures.md").read_text()
    assert boot["date"] in page and "$ lab bench boot --runs 1 --kernel debian:7.3" in page
