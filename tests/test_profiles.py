"""The SLURM profile's per-rule settings name rules that exist (Snakemake ignores others)."""

from __future__ import annotations

import re

import pytest
import yte
from workflow_helpers import REPO

from maskdistill.config import defaults

PROFILE = REPO / "profiles" / "slurm" / "config.yaml"


def _rendered(monkeypatch, **env) -> dict:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return yte.process_yaml(PROFILE.read_text())


def _rule_names() -> set[str]:
    return {
        name
        for path in (REPO / "rules").glob("*.smk")
        for name in re.findall(r"^rule (\w+):", path.read_text(), re.MULTILINE)
    }


@pytest.mark.parametrize("sweep_prefix", ["", "run0_", "run199_"])
def test_the_gpu_partition_applies_to_every_rule_whose_jobs_ask_for_gpus(monkeypatch, sweep_prefix):
    profile = _rendered(monkeypatch, MASKDISTILL_SLURM_GPU_PARTITION="gpu")
    # the jobs whose default resources hold a GPU; the linear probe runs as a training job
    gpu_jobs = {job for job, entry in defaults("resources").items() if entry.get("gpu", 0) >= 1}
    expected = gpu_jobs | {"segment_probe"}
    assert expected <= _rule_names()
    named = set(profile["set-resources"])
    assert {sweep_prefix + rule for rule in expected} <= named
    assert {re.sub(r"^run\d+_", "", rule) for rule in named} == expected
    assert profile["set-resources"][sweep_prefix + "distill_train"] == {"slurm_partition": "gpu"}


def test_without_a_gpu_partition_no_rule_is_singled_out(monkeypatch):
    monkeypatch.delenv("MASKDISTILL_SLURM_GPU_PARTITION", raising=False)
    monkeypatch.delenv("MASKDISTILL_SLURM_GPU_MODEL", raising=False)
    assert "set-resources" not in _rendered(monkeypatch)
