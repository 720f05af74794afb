"""The workflow on a real single-node SLURM cluster, through profiles/slurm.

The fixture starts munge, MariaDB + slurmdbd (so that the executor plugin's default `sacct`
status checks work), slurmctld and slurmd on localhost with tests/slurm/start_local_slurm.sh,
installing the Debian packages when they are missing (about 25 s), and stops only the daemons it
started (tests/slurm/stop_local_slurm.sh). It needs root and apt-get (CI runs as root on Debian);
elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter

import pytest
import yaml
from workflow_helpers import REPO, make_workspace, parse_jobs, snakemake, tiny_config

SCRIPTS = REPO / "tests" / "slurm"
PROFILE = REPO / "profiles" / "slurm"
SLURM_ENV = {  # read by profiles/slurm/config.yaml
    "MASKDISTILL_SLURM_ACCOUNT": "ci",
    "MASKDISTILL_SLURM_PARTITION": "debug",
}

pytestmark = pytest.mark.slurm


def _why_no_slurm() -> str | None:
    """Why a local SLURM cluster cannot be started here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root to install and start the SLURM daemons (CI runs as root)"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "SLURM is not installed and apt-get is not available to install it"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node SLURM cluster (partition debug, account ci); stopped afterwards."""
    reason = _why_no_slurm()
    if reason:
        pytest.skip(f"local SLURM cluster: {reason}")
    # the scripts' default run folder (${TMPDIR:-/tmp}/local-slurm): a cluster that an earlier
    # run left behind is found there and reused (the scripts never stop what they did not start)
    env = dict(os.environ)
    try:
        started = subprocess.run(
            ["bash", SCRIPTS / "start_local_slurm.sh"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if started.returncode != 0:
            pytest.fail(f"could not start SLURM:\n{started.stdout}\n{started.stderr}")
        yield
    finally:
        subprocess.run(["bash", SCRIPTS / "stop_local_slurm.sh"], env=env, check=False)


SHEETS = ("discover", "cluster", "distill", "select", "segment", "overview")


def _sacct_jobs(since: str) -> list[dict[str, str]]:
    """Jobs (allocations, not steps) that sacct recorded since ``since`` (YYYY-MM-DDTHH:MM:SS)."""
    fields = ["JobID", "JobName", "Comment", "State", "Account", "Partition"]
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-S", since, f"--format={','.join(fields)}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line]


def _slurm_comment(rule: str, wildcards: str) -> str:
    """The --comment the executor plugin gives a job: rule_<rule>[_wildcards_<v1>_<v2>...]."""
    if not wildcards:
        return f"rule_{rule}"
    values = [item.split("=", 1)[1] for item in wildcards.split(", ")]
    return f"rule_{rule}_wildcards_{'_'.join(values)}"


def test_demo_workflow_runs_every_job_as_a_slurm_job(slurm_cluster, tmp_path):
    workspace = make_workspace(tmp_path / "workflow", tiny_config())
    profile_args = ["--profile", str(PROFILE), "--slurm-init-seconds-before-status-checks", "1"]

    plan = parse_jobs(
        snakemake(workspace, "--dry-run", *profile_args, env=SLURM_ENV, slurm=True).stdout
    )

    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    run = snakemake(workspace, *profile_args, env=SLURM_ENV, slurm=True)
    local = parse_jobs(run.stdout + run.stderr, local=True)
    # the Snakefile's localrules
    localrules = {"all", "evaluate_table", "evaluate_ablation", "run_view"}
    sheets = {("visualize_sheet", f"stage={stage}") for stage in SHEETS}
    assert set(local) == {(rule, "") for rule in localrules | {"visualize_plots"}} | sheets

    jobs = _sacct_jobs(since)
    comments = Counter(job["Comment"] for job in jobs)
    assert comments == Counter({_slurm_comment(*job): n for job, n in (plan - local).items()})
    # demo data, 2 discover shards, cluster, distill training, 2 distill prediction shards,
    # 2 select shards, segment training, 2 segment prediction shards, 5 evaluations
    assert sum(comments.values()) == 17
    assert {job["State"] for job in jobs} == {"COMPLETED"}
    assert {(job["Account"], job["Partition"]) for job in jobs} == {("ci", "debug")}
    assert len({job["JobName"] for job in jobs}) == 1  # one workflow run (the plugin's run uuid)

    # outputs complete: every output of the summary is present and up to date
    summary = snakemake(workspace, "--summary", *profile_args, env=SLURM_ENV, slurm=True).stdout
    rows = [line.split("\t") for line in summary.splitlines()[1:] if "\t" in line]
    # demo data, 2 shards, 2 pseudo GT shards and stats, model, training metrics, 2 prediction
    # shards, 2 stage-4 map folders and their 2 stats, stage-5 model, metrics and 2 prediction
    # folders,
    # 5 metrics JSONs, the table and the ablation table (Markdown and JSON), 6 contact sheets,
    # 6 plots and the run's manifest of its cache folders
    assert len(rows) == 39 and all(row[4:6] == ["ok", "no update"] for row in rows), summary

    second = snakemake(workspace, *profile_args, env=SLURM_ENV, slurm=True)
    assert "Nothing to be done" in second.stdout + second.stderr
    assert len(_sacct_jobs(since)) == len(jobs)

    # a sweep over two tau values on the same cache: every job of its runs is a SLURM job of its
    # run's rule (run<i>_...), which the job, parsing the workflow again, finds and runs
    sweep_config = workspace / "sweep.yaml"
    sweep_config.write_text(
        yaml.safe_dump(tiny_config(run_name="taus", sweep={"select.tau": [0.5, 0.7]}))
    )
    sweep_args = [*profile_args, "--configfile", str(sweep_config)]
    plan = parse_jobs(
        snakemake(workspace, "--dry-run", *sweep_args, env=SLURM_ENV, slurm=True).stdout
    )
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    run = snakemake(workspace, *sweep_args, env=SLURM_ENV, slurm=True)
    local = parse_jobs(run.stdout + run.stderr, local=True)
    jobs = _sacct_jobs(since)
    comments = Counter(job["Comment"] for job in jobs)
    assert comments == Counter({_slurm_comment(*job): n for job, n in (plan - local).items()})
    # per run: 2 select shards, segment training, 2 segment prediction shards, 5 evaluations
    assert sorted({job["Comment"].split("_")[1] for job in jobs}) == ["run0", "run1"]
    assert sum(comments.values()) == 2 * 10
    assert {job["State"] for job in jobs} == {"COMPLETED"}
    assert (workspace / "results/taus/sweep/select.tau/compare.png").is_file()
