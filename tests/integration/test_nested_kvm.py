"""The KVM path the CI runners labelled `kvm` take, proven on this machine, which has no vmx or svm:
the kvm-host topology boots a TCG guest with -cpu max (it sees svm and npt), the lab is put inside
it (its wheel, a venv, this run's images and kernels), loads kvm_amd, and boots its own guests with
KVM: the probe, `lab bench boot --accel kvm`, and one stable-pages sub-run whose manifest says kvm."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(2400)


def test_the_lab_inside_a_tcg_guest_runs_its_guests_with_kvm(lab_boot):
    lab = lab_boot("kvm-host", kernel="debian:7.3", fresh=True)
    assert lab.chosen_accel.name == "tcg"  # the outer machine: this host has no vmx or svm
    host = lab.guest("host")
    flags = host.run("grep -m1 '^flags' /proc/cpuinfo", check=True).stdout.split()
    assert "svm" in flags and "npt" in flags
    assert host.run("test -c /dev/kvm && lsmod | grep -q '^kvm_amd'").ok

    bench = host.run("lab bench boot --accel kvm --runs 1", timeout=900)
    assert bench.ok, bench.stdout[-2000:] + bench.stderr[-2000:]
    # The probe: XSAVE models panic the nested guest's kernel (fpstate_reset), so it settles on Nehalem.
    assert "acceleration: KVM (-cpu Nehalem: probe guest booted under KVM" in bench.stderr, bench.stderr[-2000:]
    assert "first guest command: lab" in bench.stdout
    verdict = json.loads(host.run("cat /root/.cache/lab/accel/*.json", check=True).stdout)
    assert verdict["kvm"] is True and verdict["cpu"] == "Nehalem"
    assert any("fpstate_reset" in reason for reason in verdict["reasons"]), verdict["reasons"]

    run = host.run("cd /root && LAB_RESULTS=/root/sp lab run stable-pages --accel kvm --kernel debian:7.3 --direction write "
                   "--duration 3 --control-duration 1 --target xfs", timeout=1200)
    listing = host.run("ls /root/sp", check=True).stdout.split()
    assert len(listing) == 1, listing
    results = json.loads(host.run(f"cat /root/sp/{listing[0]}/results.json", check=True).stdout)
    manifest = json.loads(host.run(f"cat /root/sp/{listing[0]}/subruns/debian-7.3/manifest.json", check=True).stdout)
    section = results["subruns"]["debian-7.3"]
    assert manifest["accel"]["name"] == "kvm" and manifest["accel"]["cpu"] == "Nehalem", manifest["accel"]
    assert "-accel" in manifest["argv"]["vm"] and "kvm" in manifest["argv"]["vm"]
    assert run.ok and section["verdict"] == "PASS", section.get("reason") or run.stderr[-2000:]
    # The mutation happened under KVM too (a PASS with no I/O would be an ERROR).
    case = section["cases"]["xfs-write-64K"]
    assert case["runs"]["mutate"]["ops"] > 0 and case["runs"]["mutate"]["mutations"] > 0, case
