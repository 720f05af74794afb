"""Workstation GPU pinning with fake device counts (MASKDISTILL_GPUS) on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from maskdistill.gpu import acquire, already_pinned, device_count, run_pinned

SHOW_DEVICES = [
    sys.executable,
    "-c",
    "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))",
]


def test_device_count_reads_the_fake_count():
    assert device_count({"MASKDISTILL_GPUS": "3"}) == 3
    assert device_count({"MASKDISTILL_GPUS": "0"}) == 0


def test_device_count_rejects_a_bad_fake_count():
    with pytest.raises(ValueError, match="MASKDISTILL_GPUS"):
        device_count({"MASKDISTILL_GPUS": "two"})


def test_scheduler_or_user_choice_counts_as_pinned():
    assert already_pinned({"SLURM_JOB_ID": "17"})
    assert already_pinned({"CUDA_VISIBLE_DEVICES": "1"})
    assert not already_pinned({"PATH": "/bin"})


def test_concurrent_holders_get_distinct_lowest_indices(tmp_path):
    with acquire(1, 3, tmp_path) as first, acquire(2, 3, tmp_path) as second:
        assert first == [0]
        assert second == [1, 2]
    with acquire(3, 3, tmp_path) as all_three:  # everything was released
        assert all_three == [0, 1, 2]


def test_a_holder_waits_until_a_device_is_released(tmp_path):
    got = []

    def second_job():
        with acquire(1, 1, tmp_path, poll_s=0.02) as indices:
            got.append((indices, time.monotonic()))

    with acquire(1, 1, tmp_path):
        thread = threading.Thread(target=second_job)
        thread.start()
        time.sleep(0.3)
        assert got == []  # still waiting: the only device is held
        released = time.monotonic()
    thread.join(5)
    assert got[0][0] == [0]
    assert got[0][1] >= released


def test_asking_for_more_devices_than_exist_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="2 GPU"), acquire(3, 2, tmp_path):
        pass


def test_run_pinned_sets_visible_devices_and_returns_status(tmp_path, capfd):
    env = {"PATH": os.environ["PATH"], "MASKDISTILL_GPUS": "2"}
    assert run_pinned(SHOW_DEVICES, 2, tmp_path, env) == 0
    assert capfd.readouterr().out.strip() == "0,1"
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    assert run_pinned(failing, 1, tmp_path, env) == 3


@pytest.mark.parametrize(
    ("extra", "gpus"),
    [({"SLURM_JOB_ID": "5"}, 1), ({}, 0), ({"MASKDISTILL_GPUS": "0"}, 1)],
)
def test_nothing_is_pinned_under_slurm_for_cpu_jobs_or_without_gpus(tmp_path, capfd, extra, gpus):
    env = {"PATH": os.environ["PATH"], "MASKDISTILL_GPUS": "2", **extra}
    assert run_pinned(SHOW_DEVICES, gpus, tmp_path, env) == 0
    assert capfd.readouterr().out.strip() == "unset"


def test_cli_jobs_running_together_never_share_a_card(tmp_path):
    """Three `maskdistill gpu-run` processes on a fake 2-GPU machine: distinct cards at once."""
    script = (
        "import os, sys, time; t = time.time(); time.sleep(1.0); "
        "open(sys.argv[1], 'w').write(f\"{os.environ['CUDA_VISIBLE_DEVICES']} {t} {time.time()}\")"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env["MASKDISTILL_GPUS"] = "2"
    env.pop("MASKDISTILL_GPU_LOCK_DIR", None)
    locks = tmp_path / "locks"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "maskdistill", "gpu-run", "--gpus", "1", "--lock-dir", locks]
            + ["--", sys.executable, "-c", script, tmp_path / f"job{i}.txt"],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        for i in range(3)
    ]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    jobs = []
    for i in range(3):
        device, start, end = (tmp_path / f"job{i}.txt").read_text().split()
        jobs.append((device, float(start), float(end)))
    assert sorted({device for device, _, _ in jobs}) == ["0", "1"]
    for a in range(3):
        for b in range(a + 1, 3):
            (dev_a, start_a, end_a), (dev_b, start_b, end_b) = jobs[a], jobs[b]
            overlap = start_a < end_b and start_b < end_a
            assert not (overlap and dev_a == dev_b), f"jobs {a} and {b} shared GPU {dev_a}"
