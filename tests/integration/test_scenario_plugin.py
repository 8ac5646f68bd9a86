"""A scenario from another package, found through the `lab.scenarios` entry point and run by
`lab run` in a real guest; and a pytest file of the user's own using the lab's fixtures."""

import json
import os
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_entry_point_scenario_runs_through_lab_run(tmp_path):
    env = dict(os.environ, LAB_RESULTS=str(tmp_path), PYTHONPATH=str(FIXTURES / "example-scenario"))
    res = subprocess.run([sys.executable, "-m", "lab", "run", "example-integrity", "--kernel", "debian:7.3", "--blocks", "8"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "debian-7.3: PASS - 1 case(s) passed" in res.stdout
    results = json.loads(next(tmp_path.glob("*example-integrity*/results.json")).read_text())
    case = results["subruns"]["debian-7.3"]["cases"]["dd-roundtrip"]
    assert case["verdict"] == "PASS" and case["format"] == "T10-DIF-TYPE1-CRC"


def test_a_users_pytest_file_is_a_lab_scenario(tmp_path):
    user_test = tmp_path / "test_mine.py"
    user_test.write_text('''
import pytest

@pytest.mark.lab(topology="nvme-pi", params={"pi": 3})
def test_type3(guest):
    assert guest.run("cat /sys/block/nvme0n1/integrity/format", check=True).stdout.strip() == "T10-DIF-TYPE3-CRC"

def test_type2_reads_as_type1(lab_boot):
    lab = lab_boot("nvme-pi", params={"pi": 2})
    out = lab.guest("vm").run("cat /sys/block/nvme0n1/integrity/format; nvme id-ns -o json /dev/nvme0n1", check=True).stdout
    assert out.splitlines()[0] == "T10-DIF-TYPE1-CRC"  # Linux gives types 1 and 2 one profile
    assert '"dps":2' in out.replace(" ", "")
''')
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(user_test), "--lab-kernel", "debian:7.3"],
                         env=dict(os.environ, LAB_RESULTS=str(tmp_path / "results")), capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "2 passed" in res.stdout
    assert list((tmp_path / "results").glob("*pytest-nvme-pi*/machines/vm/console.log"))
