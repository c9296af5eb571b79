"""The CPUs a process may use: its affinity, capped by a container's CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.cpus import cpu_model, usable_cpus


@pytest.fixture
def affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight CPUs to run on, whatever this machine has."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", 8), ("200000 100000\n", 2), ("150000 100000\n", 2), ("5000 100000\n", 1)],
)
def test_a_cgroup_v2_quota_caps_the_cpus(tmp_path: Path, affinity, cpu_max, expected) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max)
    assert usable_cpus(tmp_path) == expected


def test_a_cgroup_v1_quota_caps_the_cpus(tmp_path: Path, affinity) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(tmp_path) == 3
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert usable_cpus(tmp_path) == 8


def test_no_quota_or_an_unreadable_one_caps_nothing(tmp_path: Path, affinity) -> None:
    assert usable_cpus(tmp_path) == 8  # no cgroup files at all
    (tmp_path / "cpu.max").write_text("garbage")
    assert usable_cpus(tmp_path) == 8


def test_this_machine_has_at_least_one() -> None:
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)


def test_the_cpu_model_is_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon Test 9000\n")
    assert cpu_model(cpuinfo) == "Xeon Test 9000"
    assert cpu_model(tmp_path / "absent")  # the platform's own answer, never empty
