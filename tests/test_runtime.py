"""fusionkit.runtime.tune_allocator: glibc malloc settings that remove per-batch page faults.

Each case runs in a fresh interpreter: the settings are process-wide and applied once."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def _run(code: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, check=True, env={**os.environ, **env},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the allocator settings exist on glibc (Linux) only")
def test_tuning_removes_the_page_faults_of_a_cnn_forward():
    """EfficientNet-Lite0 (random init), batch 4 at 224 px, 5 forwards after 2 warm-up ones: with
    glibc's defaults each batch faults its activations in again (~10,000 pages here); tuned, the
    freed activations are reused."""
    code = """
        import json, resource, torch
        from fusionkit.runtime import tune_allocator, allocator_tuned
        if {tune}:
            assert tune_allocator() is True and tune_allocator() is True and allocator_tuned()
        from fusionkit.encoders import build_encoder
        torch.set_num_threads(1)
        enc = build_encoder("image", "efficientnet_lite0", weights=None).eval()
        x = torch.zeros(4, 3, 224, 224, dtype=torch.uint8)
        with torch.inference_mode():
            enc(x), enc(x)
            r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(5):
                enc(x)
        print(json.dumps({{"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0}}))
    """
    default = _run(code.format(tune=False), FUSIONKIT_MALLOC_TUNING="1")["faults"]
    tuned = _run(code.format(tune=True), FUSIONKIT_MALLOC_TUNING="1")["faults"]
    assert default > 5 * 4000, default  # every batch faults its activations in again
    assert tuned < default / 5, (tuned, default)


def test_environment_switch_turns_it_off():
    code = """
        import json
        from fusionkit.runtime import tune_allocator, allocator_tuned
        print(json.dumps({"tuned": tune_allocator(), "state": allocator_tuned()}))
    """
    assert _run(code, FUSIONKIT_MALLOC_TUNING="0") == {"tuned": False, "state": False}
    assert _run(code, FUSIONKIT_MALLOC_TUNING="1") == {"tuned": GLIBC, "state": GLIBC}


# ---------------------------------------------------------------------------------------- CPUs
@pytest.fixture
def no_limits(monkeypatch, tmp_path):
    """A process with 4 cores of affinity, no cgroup files, no Ray; each test adds one limit."""
    from fusionkit import runtime

    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(runtime, "CGROUP_ROOT", tmp_path / "cgroup")
    monkeypatch.setattr(runtime, "PROC_SELF_CGROUP", tmp_path / "proc-self-cgroup")
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    return runtime, tmp_path


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_available_cpus_follows_the_affinity(no_limits, monkeypatch):
    runtime, _ = no_limits
    assert runtime.available_cpus() == 4
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {3})
    assert runtime.available_cpus() == 1


def test_cgroup_v2_quota_caps_it_along_the_cgroup_path(no_limits):
    runtime, tmp = no_limits
    _write(tmp / "proc-self-cgroup", "0::/user.slice/job\n")
    _write(tmp / "cgroup" / "user.slice" / "job" / "cpu.max", "max 100000\n")  # no quota here
    assert runtime.cgroup_cpu_limit() is None and runtime.available_cpus() == 4
    _write(tmp / "cgroup" / "user.slice" / "cpu.max", "250000 100000\n")  # 2.5 cores, a parent's limit
    assert runtime.cgroup_cpu_limit() == 2.5
    assert runtime.available_cpus() == 2  # rounded down: a third thread would be throttled
    _write(tmp / "cgroup" / "user.slice" / "job" / "cpu.max", "50000 100000\n")  # half a core
    assert runtime.available_cpus() == 1  # never 0


def test_cgroup_v2_in_a_container_namespace(no_limits):
    runtime, tmp = no_limits
    _write(tmp / "proc-self-cgroup", "0::/\n")
    _write(tmp / "cgroup" / "cpu.max", "300000 100000\n")
    assert runtime.available_cpus() == 3


def test_cgroup_v1_cfs_quota(no_limits):
    runtime, tmp = no_limits
    _write(tmp / "proc-self-cgroup", "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n")
    v1 = tmp / "cgroup" / "cpu,cpuacct" / "docker" / "abc"
    _write(v1 / "cpu.cfs_quota_us", "-1\n")
    _write(v1 / "cpu.cfs_period_us", "100000\n")
    assert runtime.available_cpus() == 4  # -1: no quota
    _write(v1 / "cpu.cfs_quota_us", "150000\n")
    assert runtime.cgroup_cpu_limit() == 1.5 and runtime.available_cpus() == 1


def test_unreadable_cgroup_files_mean_no_limit(no_limits):
    runtime, tmp = no_limits
    _write(tmp / "proc-self-cgroup", "0::/a\n")
    _write(tmp / "cgroup" / "a" / "cpu.max", "garbage\n")
    assert runtime.cgroup_cpu_limit() is None and runtime.available_cpus() == 4


class _FakeRay:
    """What fusionkit asks of Ray: is_initialized() and the runtime context's assigned resources."""

    def __init__(self, assigned, initialized=True, driver=False):
        self.assigned, self.initialized, self.driver = assigned, initialized, driver

    def is_initialized(self):
        return self.initialized

    def get_runtime_context(self):
        ray = self

        class Context:
            def get_assigned_resources(self):
                assert not ray.driver, "This method is only available when the process is a worker"
                return ray.assigned

        return Context()


def test_a_ray_trial_gets_the_cpus_ray_assigned(no_limits, monkeypatch):
    runtime, _ = no_limits
    monkeypatch.setitem(sys.modules, "ray", _FakeRay({"CPU": 2.0, "memory": 1e9}))
    assert runtime.ray_cpus() == 2.0 and runtime.available_cpus() == 2
    monkeypatch.setitem(sys.modules, "ray", _FakeRay({"CPU": 0.5}))
    assert runtime.available_cpus() == 1
    for fake in (_FakeRay({}), _FakeRay({"CPU": 3}, initialized=False), _FakeRay({"CPU": 1}, driver=True)):
        monkeypatch.setitem(sys.modules, "ray", fake)  # an actor without CPUs, Ray not started, the driver
        assert runtime.ray_cpus() is None and runtime.available_cpus() == 4


def test_ray_is_never_imported():
    code = """
        import json, sys
        from fusionkit.runtime import available_cpus, work_threads
        available_cpus(), work_threads()
        print(json.dumps({"ray": "ray" in sys.modules}))
    """
    assert _run(code) == {"ray": False}


def test_work_threads_fit_the_process_and_keep_a_lower_setting(no_limits, monkeypatch):
    import torch

    runtime, tmp = no_limits
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        assert runtime.work_threads() == 4  # the affinity
        _write(tmp / "proc-self-cgroup", "0::/\n")
        _write(tmp / "cgroup" / "cpu.max", "200000 100000\n")
        assert runtime.work_threads() == 2  # the quota
        torch.set_num_threads(1)
        assert runtime.work_threads() == 1  # torch.set_num_threads(1) / OMP_NUM_THREADS=1 still holds
        monkeypatch.setitem(sys.modules, "ray", _FakeRay({"CPU": 2}))
        assert runtime.work_threads() == 2  # a Ray worker gets its trial's CPUs, whatever a former trial set
        with runtime.cpu_threads(runtime.work_threads()):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1  # restored
    finally:
        torch.set_num_threads(before)


def test_openmp_environment_sets_only_what_is_unset(no_limits):
    runtime, _ = no_limits
    env = {}
    assert runtime.openmp_environment(env) == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "4"}
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "4"}
    mine = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"}
    assert runtime.openmp_environment(mine) == {} and mine == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"}


def test_the_cli_sets_it_before_torch_loads():
    """``fusionkit`` sets the variables in its own process before anything imports torch, so a
    command that trains in-process gets passive OpenMP threads too."""
    code = """
        import json, os, sys
        from fusionkit import cli
        cli.main(["profiles"])
        print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY"), "torch": "torch" in sys.modules}))
    """
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True,
                         env=env)  # fmt: skip
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"policy": "PASSIVE", "torch": False}
