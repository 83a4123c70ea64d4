import os

import pytest

from dcgan import cpus


def test_cgroup_v2_quota_caps_the_count(tmp_path, monkeypatch):
    monkeypatch.setattr(cpus, "affinity", lambda: 16)
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpus.cgroup_quota(tmp_path) == 1.5
    assert cpus.usable_cpus(tmp_path) == 2


def test_cgroup_v2_without_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(cpus, "affinity", lambda: 3)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_quota(tmp_path) is None
    assert cpus.usable_cpus(tmp_path) == 3


def test_cgroup_v1_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(cpus, "affinity", lambda: 8)
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.usable_cpus(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpus.usable_cpus(tmp_path) == 8


def test_no_affinity_call_on_platforms_without_it(monkeypatch, tmp_path):
    """macOS has no os.sched_getaffinity: the count falls back to os.cpu_count()."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert cpus.usable_cpus(tmp_path) == 6


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no affinity mask on this platform")
def test_affinity_mask_is_followed(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert cpus.usable_cpus(tmp_path) == 1
