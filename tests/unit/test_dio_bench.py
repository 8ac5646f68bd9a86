"""lab bench dio: fio's JSON parsed strictly, ratios from one run's medians, the seed's figures."""

import json

import pytest

from lab.errors import LabError
from lab.scenarios.dio_bench import Sample, fio_argv, parse_fio, ratios, render_table, seed_ratio, spread


def fio_json(direction="read", io_bytes=1 << 30, bw=200 << 20, usr=3.5, sys=40.25, error=0):
    job = {"jobname": "dio", "error": error, "usr_cpu": usr, "sys_cpu": sys,
           "read": {"io_bytes": 0, "bw_bytes": 0}, "write": {"io_bytes": 0, "bw_bytes": 0}}
    job[direction] = {"io_bytes": io_bytes, "bw_bytes": bw}
    return "fio: some warning first\n" + json.dumps({"fio version": "fio-3.39", "jobs": [job]})


def test_fio_job_as_the_seed_ran_it():
    argv = fio_argv("/mnt/x", "write", "64k", seconds=4, size_mib=256, output="/tmp/o.json")
    for flag in ("--rw=write", "--bs=64k", "--iodepth=16", "--ioengine=io_uring", "--direct=1", "--runtime=4", "--size=256M"):
        assert flag in argv


def test_bandwidth_and_cpu_are_read_from_the_direction_measured():
    assert parse_fio(fio_json("write"), "write") == Sample(200.0, 3.5, 40.25)


@pytest.mark.parametrize("text,message", [
    ("", "no JSON"),
    ("{not json", "unreadable"),
    (fio_json(io_bytes=0), "moved no data"),
    (fio_json(error=5), "job error 5"),
    (json.dumps({"jobs": []}), "unreadable"),
])
def test_a_run_that_moved_nothing_or_broke_is_an_error(text, message):
    with pytest.raises(LabError, match=message):
        parse_fio(text, "read")


def test_a_measurement_in_the_wrong_direction_moved_nothing():
    with pytest.raises(LabError, match="moved no data"):
        parse_fio(fio_json("write"), "read")


def test_ratios_come_from_medians_of_one_run():
    cells = {
        "zero-copy-read-4k": {"bandwidth": spread([Sample(100, 1, 50), Sample(110, 1, 50), Sample(90, 1, 50)])},
        "bounce-read-4k": {"bandwidth": spread([Sample(80, 1, 50), Sample(85, 1, 50), Sample(70, 1, 50)])},
    }
    r = ratios(cells, "read", "4k")
    assert r["bounce"] == pytest.approx(0.8) and r["pi-bounce"] is None
    table = render_table({"cases": cells})
    assert "80%" in table and "82%" in table  # ours and the seed's side by side


def test_seed_ratios_match_the_mail():
    assert seed_ratio("read", "4k") == pytest.approx(1081 / 1316)
    assert round(100 * seed_ratio("write", "4k")) == 85
    assert all(abs(1 - seed_ratio(d, b)) < 0.01 for d in ("read", "write") for b in ("64k", "1m"))
