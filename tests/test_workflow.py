"""Rerun semantics, caching, lint and report of the real workflow (real `snakemake` runs).

One tiny demo run (tests/configs/tiny.yaml) is made once per module inside a temporary copy of
the workflow; every test then asks `snakemake --dry-run` (and `--summary`, `--list-changes`)
what a change would rerun, and compares the EXACT set of jobs with the known answer.
(`--list-changes params` is not used: Snakemake 9.27 lists every output there, changed or not.)
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from workflow_helpers import (
    REPO,
    make_workspace,
    parse_jobs,
    planned_jobs,
    rules_of,
    snakemake,
    tiny_config,
    write_config,
)

from maskdistill.coco_files import read_pseudo_gt
from maskdistill.config import validate_config
from maskdistill.distill.detectron2 import INSTALL as DETECTRON2_INSTALL
from maskdistill.distill.detectron2 import available as detectron2_available
from maskdistill.run_view import unused_entries
from maskdistill.segment.crf import crf_available

pytestmark = pytest.mark.slow  # runs the workflow with snakemake (make test-fast leaves it out)

# what runs downstream of each stage in the tiny demo (VOC layout with ground truth)


def after_cluster(num_shards: int = 2, evaluated: bool = True) -> Counter:
    """The jobs downstream of the cluster job (stages 3-5 and the metrics).

    Stage 5 predicts the evaluation split when there is ground truth, else the learning images.
    """
    # stages 3 and 4 shard by shard: no merged predictions list (only on request)
    jobs = Counter({"distill_train": 1, "distill_predict": num_shards})
    jobs += Counter({"select": num_shards, "segment_train": 1, "segment_predict": num_shards})
    jobs += Counter({"run_view": 1})  # the run folder's links to the stages' cache folders
    # the contact sheets of stages 2-5 and the overview, and the plots
    jobs += Counter({"visualize_sheet": 5, "visualize_plots": 1})
    if evaluated:
        jobs += Counter(
            {
                "evaluate_cluster": 1,
                "evaluate_distill": 1,
                "evaluate_select": 1,
                "evaluate_segment": 1,
                "evaluate_table": 1,
                "evaluate_ablation": 1,
            }
        )
    return jobs


def after_discover(num_shards: int = 2, evaluated: bool = True) -> Counter:
    """The jobs downstream of the discover jobs (the discover sheet among them)."""
    jobs = Counter({"cluster": 1, "visualize_sheet": 1}) + after_cluster(num_shards, evaluated)
    return jobs + Counter({"evaluate_discovery": 1}) if evaluated else jobs


SHEETS = ("discover", "cluster", "distill", "select", "segment", "overview")
AFTER_CLUSTER = after_cluster()
AFTER_DISCOVER = after_discover()
# what an evaluation-split change reruns: the metrics of the evaluation split and stage 5's
# predictions there (the stage-4 maps are scored on the learning images and stay)
METRICS = Counter(
    {
        "evaluate_discovery": 1,
        "evaluate_cluster": 1,
        "evaluate_distill": 1,
        "evaluate_segment": 1,
        "segment_predict": 2,
        "evaluate_table": 1,
        "evaluate_ablation": 1,
        "visualize_sheet": 6,  # the sheets show the evaluation split
        "visualize_plots": 1,
    }
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A workspace where the tiny demo has run to completion.

    It runs through profiles/workstation on a fake 2-GPU machine (MASKDISTILL_GPUS=2) with one
    GPU per discover job, so `maskdistill gpu-run` pins each shard job (the stage itself stays on
    the CPU: discover.device is cpu).
    """
    gpu_job = {"threads": 1, "mem_mb": 1000, "runtime": 10, "gpu": 1, "batch_size": 4, "workers": 0}
    config = tiny_config(resources={"discover": gpu_job})  # merged into the tiny resources
    workspace = make_workspace(tmp_path_factory.mktemp("demo"), config)
    profile = ["--profile", str(REPO / "profiles" / "workstation"), "--cores", "2"]
    snakemake(workspace, *profile, env={"MASKDISTILL_GPUS": "2"})
    return workspace


def test_workstation_profile_pins_each_gpu_job_to_a_card(demo):
    for shard in (0, 1):
        (log_path,) = (demo / "results/tiny/logs/discover").glob(f"*/shard-{shard}-of-2.log")
        log = log_path.read_text()
        assert re.search(r"pinned to CUDA_VISIBLE_DEVICES=[01]\n", log), log
    locks = {p.name for p in (demo / "results/.gpu-locks").iterdir()}
    assert "gpu-0.lock" in locks  # the lowest free card is taken first
    assert locks <= {"gpu-0.lock", "gpu-1.lock"}  # gpu-1 only when the two jobs overlapped


def variant(workspace: Path, name: str, **sections) -> list[str]:
    """``--configfile`` arguments for the tiny config with ``sections`` changed."""
    path = workspace / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_config(**sections), sort_keys=False))
    return ["--configfile", str(path)]


def summary(workspace: Path, *args: str) -> dict[str, tuple[str, str]]:
    """``snakemake --summary``: output file -> (rule, plan)."""
    text = snakemake(workspace, "--summary", *args).stdout
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.count("\t") >= 5]
    return {row[0]: (row[2], row[5]) for row in rows}


def shard_wildcards(wildcards: str) -> str:
    """A discover job's wildcards without its content key (``key=...``)."""
    return re.sub(r"^key=[0-9a-f]+, ", "", wildcards)


def shards_of(jobs_text: str) -> list[str]:
    """Discover shard paths mentioned in snakemake's output."""
    return sorted({w for w in jobs_text.replace(",", " ").split() if w.endswith(".h5")})


def test_a_finished_run_has_nothing_to_do(demo):
    table = summary(demo)
    assert table and all(plan == "no update" for _, plan in table.values()), table
    # the summary names the rule of each output: one `evaluate` rule for every metrics JSON
    per_stage = {"evaluate_" + stage for stage in ("discovery", "cluster", "distill", "select")}
    rules = set(AFTER_DISCOVER) - per_stage - {"evaluate_segment"} | {"evaluate"}
    assert {rule for rule, _ in table.values()} == {"make_demo_data", "discover"} | rules
    assert (demo / "results/tiny/evaluate/metrics.md").is_file()


def test_a_cluster_setting_reruns_cluster_and_downstream_only(demo):
    jobs = planned_jobs(demo, *variant(demo, "k3", cluster={"k": 3}))
    assert rules_of(jobs) == Counter({"cluster": 1}) + AFTER_CLUSTER


def test_a_discover_setting_reruns_discover_and_downstream_only(demo):
    jobs = planned_jobs(demo, *variant(demo, "topk", discover={"topk": 0.3}))
    assert rules_of(jobs) == Counter({"discover": 2}) + AFTER_DISCOVER
    assert {shard_wildcards(w) for rule, w in jobs if rule == "discover"} == {
        f"shard={i}, num_shards=2" for i in (0, 1)
    }


def test_execution_settings_never_trigger_a_rerun(demo):
    job = {"threads": 1, "mem_mb": 1000, "runtime": 10, "gpu": 1, "batch_size": 2, "workers": 1}
    args = variant(demo, "faster", resources={"discover": job})
    assert planned_jobs(demo, *args) == Counter()


def test_a_support_set_is_discovered_and_clustered_with_the_target(demo):
    support = demo / "support images"
    support.mkdir(exist_ok=True)
    for seed, name in enumerate(["s0.png", "s1.png", "s2.png"]):
        _write_image(support / name, 100 + seed)
    folder = {"kind": "folder", "root": str(support)}
    result = snakemake(
        demo,
        "--dry-run",
        "--cores",
        "1",
        *variant(demo, "support", cluster={"support_dataset": folder}),
    )
    jobs = parse_jobs(result.stdout)
    del jobs[("all", "")]
    # the target's shards are reused; the support set gets its own (content-addressed) shards
    assert rules_of(jobs) == Counter({"discover": 2, "cluster": 1}) + AFTER_CLUSTER
    target_shards = {str(p.relative_to(demo)) for p in demo.glob("results/cache/discover/*/*.h5")}
    support_shards = set(shards_of(result.stdout)) - target_shards
    assert len(support_shards) == 2
    assert len({Path(p).parent for p in support_shards}) == 1
    # the support set's images are inputs through its shard manifests
    manifests = set(
        re.findall(r"results/\.manifests/[0-9a-f]{12}/shard-\d-of-2\.tsv", result.stdout)
    )
    assert len(manifests) == 2
    listed = "".join((demo / path).read_text() for path in manifests)
    assert sorted(re.findall(r"^(s\d\.png)\t", listed, re.MULTILINE)) == [
        "s0.png",
        "s1.png",
        "s2.png",
    ]


def test_an_evaluation_split_change_reruns_only_the_metrics(demo):
    dataset = {**tiny_config()["dataset"], "eval_split": "train"}
    jobs = planned_jobs(demo, *variant(demo, "eval_train", dataset=dataset))
    assert rules_of(jobs) == METRICS


def test_discover_device_is_an_execution_setting(demo):
    assert planned_jobs(demo, *variant(demo, "device", discover={"device": "auto"})) == Counter()


# a pretraining small enough to run in seconds
TINY_PRETRAIN = {
    "enabled": True,
    "patch_size": 8,
    "embed_dim": 16,
    "depth": 1,
    "num_heads": 2,
    "global_size": 16,
    "local_size": 8,
    "num_local": 1,
    "out_dim": 8,
    "batch_size": 2,
    "steps": 2,
    "checkpoint_every": 1,
    "device": "cpu",
}


def test_pretrain_execution_settings_never_rerun_pretraining(demo):
    args = variant(demo, "pretrained", pretrain=TINY_PRETRAIN)
    backbone = next(p for p in planned_outputs(demo, *args) if p.endswith("backbone.pth"))
    snakemake(demo, backbone, "--cores", "1", *args)  # only the pretrain job
    changed = {**TINY_PRETRAIN, "checkpoint_every": 2, "device": "auto"}
    jobs = planned_jobs(demo, *variant(demo, "pretrained2", pretrain=changed))
    assert "pretrain" not in rules_of(jobs)
    assert rules_of(jobs)["discover"] == 2  # discover runs on the new backbone
    more_steps = {**TINY_PRETRAIN, "steps": 3}
    assert (
        rules_of(planned_jobs(demo, *variant(demo, "steps3", pretrain=more_steps)))["pretrain"] == 1
    )


def planned_outputs(workspace: Path, *args: str) -> list[str]:
    """Every output path a dry run lists."""
    result = snakemake(workspace, "--dry-run", "--cores", "1", *args)
    return re.findall(r"output: (\S+)", result.stdout + result.stderr)


def test_on_bad_image_never_triggers_a_rerun(demo):
    # the shared discover shards of a `skip` run and an `error` run are the same files
    assert planned_jobs(demo, *variant(demo, "skipping", on_bad_image="skip")) == Counter()


def test_resources_never_trigger_a_rerun(demo):
    args = variant(demo, "bigger", resources={"discover": {"mem_mb": 1500, "threads": 2}})
    assert planned_jobs(demo, *args) == Counter()


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("maskdistill/cluster/kmeans.py", Counter({"cluster": 1}) + AFTER_CLUSTER),
        ("maskdistill/discover/mask.py", Counter({"discover": 2}) + AFTER_DISCOVER),
        # the shard module: every stage that imports it, not the demo data (which does not)
        ("maskdistill/discover/shard_file.py", Counter({"discover": 2}) + AFTER_DISCOVER),
        ("maskdistill/gpu.py", Counter()),  # imported by no stage's command
    ],
)
def test_editing_a_stage_module_reruns_that_stage_and_downstream(demo, module, expected):
    path = demo / module
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        jobs = planned_jobs(demo)
    finally:
        path.write_text(original)
    assert rules_of(jobs) == expected


def test_editing_how_metrics_are_computed_or_printed_reruns_no_stage(demo):
    """metrics.py (tables, matching): only the metrics and pictures jobs are planned again."""
    path = demo / "maskdistill" / "metrics.py"
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        rules = set(rules_of(planned_jobs(demo)))
    finally:
        path.write_text(original)
    assert "evaluate_table" in rules
    assert all(rule.startswith(("evaluate_", "visualize_")) for rule in rules), rules


def test_editing_the_training_loop_changes_the_code_of_training_jobs_only(demo):
    """training/loop.py: the outputs whose job's own code changed (`--detailed-summary` status
    "params changed") are the training jobs'; the rest downstream is pending only because a model
    file it reads will be rewritten."""
    path = demo / "maskdistill" / "training" / "loop.py"
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        summary = snakemake(demo, "--detailed-summary", "--cores", "1").stdout
    finally:
        path.write_text(original)
    status = {}  # rule -> statuses of its outputs
    for line in summary.splitlines()[1:]:
        fields = line.split("\t")
        status.setdefault(fields[2], set()).add(fields[-2])
    changed = {rule for rule, found in status.items() if "params changed" in found}
    assert changed == {"distill_train", "segment_train"}, status
    assert status["distill_predict"] == status["segment_predict"] == {"ok"}


def test_a_run_differing_only_in_its_name_shares_every_stage(demo):
    """Only the run's own jobs are planned: its metrics, pictures and its view of the cache."""
    jobs = rules_of(planned_jobs(demo, *variant(demo, "renamed", run_name="renamed")))
    assert jobs == Counter(
        {rule: n for rule, n in AFTER_DISCOVER.items() if rule.startswith("evaluate")}
        | {"visualize_sheet": len(SHEETS), "visualize_plots": 1, "run_view": 1}
    )


def test_a_run_with_another_tau_reuses_stages_1_to_3(demo):
    """select.tau in a new run: selection and stage 5 again, no Mask R-CNN training."""
    jobs = rules_of(planned_jobs(demo, *variant(demo, "tau", run_name="tau", select={"tau": 0.5})))
    stage3 = {"distill_train", "distill_predict", "evaluate_distill"}
    expected = {rule: n for rule, n in AFTER_CLUSTER.items() if rule not in stage3}
    assert jobs == Counter(expected | {"evaluate_discovery": 1, "evaluate_cluster": 1,
                                       "evaluate_distill": 1, "visualize_sheet": 6})  # fmt: skip


def test_stage_5_on_the_pseudo_masks_paints_them_through_select(demo):
    """segment.labels pseudo_gt (Table 1's first row): select paints the stage-2 masks, stage 5
    learns from them; stages 1-3 are shared."""
    args = variant(demo, "pgt", run_name="pgt", segment={"labels": "pseudo_gt"})
    result = snakemake(demo, "--dry-run", "-p", "--cores", "1", *args)
    jobs = parse_jobs(result.stdout)
    del jobs[("all", "")]
    stage3 = {"distill_train", "distill_predict", "evaluate_distill"}
    expected = {rule: n for rule, n in AFTER_CLUSTER.items() if rule not in stage3}
    run_only = {"evaluate_discovery": 1, "evaluate_cluster": 1, "evaluate_distill": 1}
    assert rules_of(jobs) == Counter(expected | run_only | {"visualize_sheet": 6})
    command = _command_flags(result.stdout, "select")
    assert "--from-annotations" in command and "cluster/" in command.split("--predictions")[1]


def test_a_second_experiment_reuses_the_discover_shards(demo):
    args = variant(demo, "exp2", run_name="exp2", cluster={"k": 3})
    result = snakemake(demo, "--dry-run", "--cores", "1", *args)
    jobs = parse_jobs(result.stdout)
    del jobs[("all", "")]
    assert rules_of(jobs) == AFTER_DISCOVER  # every exp2 stage but discover (and no demo data)
    first_shards = sorted(
        str(p.relative_to(demo)) for p in demo.glob("results/cache/discover/*/*.h5")
    )
    assert len(first_shards) == 2
    assert shards_of(result.stdout) == first_shards
    # a new pseudo ground truth in the cache (another key), read by the new run's stages
    first = (demo / "results/tiny/cluster").resolve().name
    pattern = r"results/cache/cluster/([0-9a-f]{12})/pseudo_gt/shard-"
    clusters = set(re.findall(pattern, result.stdout))
    assert len(clusters) == 1 and first not in clusters


def test_the_same_config_seed_and_threads_give_the_same_numbers(demo):
    """Every stage runs again in another results folder (a cache of its own): every metric, the
    trained networks and every prediction are identical (one thread per job, as tiny.yaml)."""
    dataset = {**tiny_config()["dataset"], "root": "elsewhere/demo_data"}
    args = variant(demo, "again", run_name="again", results_dir="elsewhere", dataset=dataset)
    snakemake(demo, "--cores", "2", *args)
    first, again = demo / "results" / "tiny", demo / "elsewhere" / "again"
    assert (again / "distill").resolve().is_relative_to(demo / "elsewhere" / "cache")
    for report in sorted((first / "evaluate").glob("*.json")):
        ours, theirs = (
            json.loads(p.read_text()) for p in (report, again / "evaluate" / report.name)
        )
        for key in ("summary", "per_class_iou"):
            assert ours.get(key) == theirs.get(key), (report.name, key)
    for model in ("distill/model.pth", "segment/round-0/model.pth"):
        a, b = (torch.load(root / model, weights_only=True)["model"] for root in (first, again))
        assert all(torch.equal(a[k], b[k]) for k in a), model
    for shard in sorted((first / "distill" / "predictions").glob("shard-*.json")):
        copy = again / shard.relative_to(first)
        assert json.loads(shard.read_text()) == json.loads(copy.read_text()), shard.name
    for png in sorted((first / "segment").rglob("*.png")):
        copy = again / png.relative_to(first)
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(copy))), png


def test_crf_rounds_and_the_probe_plan_every_network_and_its_scores(demo):
    if not crf_available():
        pytest.skip("pydensecrf2 is not installed (pip install '.[crf]')")
    args = variant(
        demo,
        "crf",
        run_name="crf",  # a new run: stages 2-4 are shared, stage 5 is new
        segment={"crf": True, "crf_rounds": 1},
        probe={"enabled": True, "splits": ["train"], "epochs": 1, "batch_size": 2, "lr_epochs": []},
    )
    jobs = planned_jobs(demo, *args)
    # the probe's folder is keyed by its settings; a split folder is named by its splits
    predictions = Counter(
        re.sub(r"probe-[0-9a-f]{12}", "probe", w.rsplit(", shard=", 1)[0])
        for r, w in jobs
        if r == "segment_predict"
    )
    assert predictions == Counter(
        {
            "net=round-0, mode=crf, split=train+val": 2,  # the labels of round 1
            **{f"net={net}, mode={mode}, split=val": 2
               for net in ("round-0", "round-1", "probe") for mode in ("labels", "crf")},
        }
    )  # fmt: skip
    assert rules_of(jobs)["segment_train"] == 2 and rules_of(jobs)["segment_probe"] == 1
    assert rules_of(jobs)["evaluate_segment"] == 6


def test_crf_settings_without_the_extra_fail_at_workflow_start(demo):
    if crf_available():
        pytest.skip("pydensecrf2 is installed: the error cannot be shown")
    result = snakemake(
        demo, "--dry-run", *variant(demo, "nocrf", segment={"crf": True}), check=False
    )
    assert result.returncode != 0
    assert "pip install 'maskdistill[crf]'" in result.stdout + result.stderr


def test_a_missing_dataset_root_fails_the_dry_run_with_its_key(tmp_path):
    config = tiny_config(demo_data={"generate": False}, dataset={"root": "no/such/dir"})
    workspace = make_workspace(tmp_path / "workflow", config)
    result = snakemake(workspace, "--dry-run", check=False)
    assert result.returncode != 0
    assert "config key 'dataset.root': no/such/dir is not a folder" in result.stdout + result.stderr


def test_unsupported_files_and_a_random_backbone_are_named_on_the_console(tmp_path):
    workspace = _folder_workspace(tmp_path, ["a.png", "b.png", "c.png"])
    (workspace / "images" / "clip.gif").write_bytes(b"GIF89a")
    result = snakemake(workspace, "--dry-run")
    warnings = [line for line in result.stderr.splitlines() if "maskdistill warning" in line]
    assert any("1 files under images are not images" in w and "clip.gif" in w for w in warnings)
    assert any("is a random ViT" in w for w in warnings)  # the tiny config's backbone


def test_names_with_braces_plan_and_hostile_split_lines_fail_the_dry_run(tmp_path):
    workspace = _folder_workspace(tmp_path, ["a.png", "brace{x}.png", "c{}.png"])
    result = snakemake(workspace, "--dry-run")
    assert "braces" not in result.stderr  # images enter the DAG through shard manifests
    manifests = "".join(p.read_text() for p in workspace.glob("results/.manifests/*/*.tsv"))
    assert "brace{x}.png\t" in manifests and "c{}.png\t" in manifests
    # a VOC split line naming a file outside the dataset: the dry run names the file and line
    voc = tmp_path / "voc"
    for split, lines in {"train": ["x", "y"], "val": ["x", "/home/me/photos/victim"]}.items():
        (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(lines))
    (voc / "JPEGImages").mkdir()
    for seed, name in enumerate(["x", "y"]):  # two: the tiny batches hold two images
        _write_image(voc / "JPEGImages" / f"{name}.jpg", seed)
    dataset = {"kind": "voc", "root": str(voc), "learn_splits": ["train"], "eval_split": None}
    write_config(workspace, tiny_config(demo_data={"generate": False}, dataset=dataset,
                                        cluster={"k": 1}))  # fmt: skip
    assert snakemake(workspace, "--dry-run").returncode == 0  # val is not read
    dataset["learn_splits"] = ["train", "val"]
    write_config(workspace, tiny_config(demo_data={"generate": False}, dataset=dataset,
                                        cluster={"k": 1}))  # fmt: skip
    result = snakemake(workspace, "--dry-run", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and f"{voc}/ImageSets/Segmentation/val.txt:2" in output
    assert not (tmp_path / "home").exists()


@pytest.mark.skipif(
    not detectron2_available(), reason=f"detectron2 is not installed ({DETECTRON2_INSTALL})"
)
def test_the_detectron2_backend_runs_the_demo_to_the_metrics_table(demo):
    distill = {"backend": "detectron2", "arch": "resnet50", "init": "none", "fpn_channels": 32,
               "box_head_dim": 64, "mask_head_convs": 1, "warmup_iterations": 1, "lr": 0.001,
               "max_size": 96}  # fmt: skip
    args = variant(demo, "d2", run_name="d2", distill=distill)
    targets = ["results/d2/evaluate/metrics.md", "results/d2/stages.json"]
    snakemake(demo, "--cores", "2", *targets, *args)
    table = (demo / "results/d2/evaluate/metrics.md").read_text()
    assert "| stage 3: distill | mask AP50 (multi) |" in table
    assert "| stage 3: distill | mIoU |" in table
    model = torch.load(demo / "results/d2/distill/model.pth", weights_only=True)
    assert model["extra"]["backend"] == "detectron2"
    assert not list((demo / "results/cache/discover").glob("*/.*tmp*"))  # shards reused


def test_lint_passes(demo):
    result = snakemake(demo, "--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_report_is_html_with_the_metrics_pictures_and_plots(demo):
    snakemake(demo, "--report", "results/report.html")
    html = (demo / "results/report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "metrics.md" in html
    for stage in ("discover", "cluster", "distill", "select", "segment", "overview"):
        assert f"sheet-{stage}.png" in html
    for plot in ("cluster_sizes", "scores", "training", "miou", "per_class", "confusion"):
        assert f"{plot}.png" in html
        picture = Image.open(demo / "results/tiny/pictures" / f"{plot}.png")
        assert picture.mode == "RGB" and min(picture.size) > 100
    assert "MaskDistill: unsupervised semantic segmentation" in html  # report/workflow.rst


# ---------------------------------------------------------------- sweeps


def sweep_jobs(jobs: Counter) -> Counter:
    """``rules_of`` for a sweep's jobs, the run prefix (``run<i>_``) left out of each rule."""
    plain = Counter()
    for (rule, wildcards), n in jobs.items():
        plain[(re.sub(r"^run\d+_", "", rule), wildcards)] += n
    return rules_of(plain)


def test_a_sweep_over_tau_computes_stages_1_to_3_once(tmp_path):
    """The bar's dry run: discover, cluster and Mask R-CNN once; select and stage 5 per value;
    every run's own metrics, pictures and view; the sweep's two comparisons."""
    config = tiny_config(run_name="taus", sweep={"select.tau": [0.5, 0.7, 0.9]})
    jobs = sweep_jobs(planned_jobs(make_workspace(tmp_path, config)))
    per_run = Counter({rule: 3 * n for rule, n in after_cluster().items()})
    for rule in ("distill_train", "distill_predict"):
        per_run[rule] //= 3
    expected = per_run + Counter({"make_demo_data": 1, "discover": 2, "cluster": 1})
    expected += Counter({"evaluate_discovery": 3, "visualize_sheet": 3, "sweep_compare": 2})
    assert jobs == expected


def test_a_sweep_over_k_reruns_cluster_and_after_nothing_before(demo):
    """Each run: clustering and every later stage, and its own pictures and metrics (those of
    discovery among them); the discover shards are the demo's."""
    args = variant(demo, "ks", run_name="ks", sweep={"cluster.k": [3, 4]})
    jobs = sweep_jobs(planned_jobs(demo, *args))
    per_run = Counter({rule: 2 * n for rule, n in AFTER_DISCOVER.items()})
    assert jobs == per_run + Counter({"sweep_compare": 2})


def test_a_sweep_runs_to_its_report_sharing_the_cache(demo):
    """Two tau values on the finished demo: each run's view names the demo's Mask R-CNN, the
    report compares them, and cleaning the cache keeps what the sweep's runs use."""
    args = variant(demo, "taus", run_name="taus", sweep={"select.tau": [0.5, 0.7]})
    snakemake(demo, "--cores", "2", *args)
    runs = [demo / "results/taus" / f"select.tau={tau}" for tau in ("0.5", "0.7")]
    distill = {(run / "distill").resolve() for run in runs}
    assert distill == {(demo / "results/tiny/distill").resolve()}
    assert len({(run / "select").resolve() for run in runs}) == 2
    table = (demo / "results/taus/sweep/select.tau/compare.md").read_text()
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| 0.")]
    assert rows == ["| 0.5", "| 0.7"]
    assert "stage 5: segment mIoU %" in table
    every_run = (demo / "results/taus/sweep/runs/compare.md").read_text()
    assert "| select.tau 0.5 |" in every_run and "| select.tau 0.7 |" in every_run
    plot = Image.open(demo / "results/taus/sweep/select.tau/compare.png")
    assert plot.mode == "RGB" and min(plot.size) > 100
    assert not [e.path for e in unused_entries(demo / "results")
                if e.path.parent.name in ("select", "segment")]  # fmt: skip
    assert "Nothing to be done" in snakemake(demo, "--dry-run", "--cores", "1", *args).stdout


# ---------------------------------------------------------------- folder dataset, shard reruns

NUM_SHARDS = 3


def _write_image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)


def _shard(name: str) -> int:
    """The discover shard of an image (maskdistill.sharding.shard_of), computed independently."""
    return zlib.crc32(name.encode()) % NUM_SHARDS


def _names_for_shards(prefix: str, per_shard: int) -> list[str]:
    """File names, ``per_shard`` in each shard (shard = crc32(file name) % NUM_SHARDS)."""
    names, counts, i = [], Counter(), 0
    while min(counts[s] for s in range(NUM_SHARDS)) < per_shard:
        name = f"{prefix}{i:03d}.png"
        shard = _shard(name)
        if counts[shard] < per_shard:
            names.append(name)
            counts[shard] += 1
        i += 1
    return names


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A workspace where an unlabeled image folder went through discover and cluster."""
    workspace = make_workspace(tmp_path_factory.mktemp("folder"), {})
    images = workspace / "images"
    images.mkdir()
    for seed, name in enumerate(_names_for_shards("img", per_shard=2)):
        _write_image(images / name, seed)
    config = tiny_config(
        run_name="folder",
        demo_data={"generate": False},
        dataset={"kind": "folder", "root": "images", "eval_split": None},
        discover={"num_shards": NUM_SHARDS},
    )
    write_config(workspace, config)
    snakemake(workspace, "--cores", "2")
    return workspace


def test_adding_images_reruns_only_the_shards_they_land_in(folder):
    # the new name sorts before the others: every folder image's position (its id) shifts
    new = next(n for n in _names_for_shards("a", per_shard=1) if _shard(n) == 1)
    _write_image(folder / "images" / new, 99)
    jobs = Counter({(rule, shard_wildcards(w)): n for (rule, w), n in planned_jobs(folder).items()})
    # discover: only the new image's shard; stages 3-5 learn again from the new pseudo ground
    # truth, and stage 5 predicts the folder again (its final segmentation)
    shards = [f"shard={i}, num_shards={NUM_SHARDS}" for i in range(NUM_SHARDS)]
    final = [f"net=round-0, mode=labels, split=all, {shard}" for shard in shards]
    assert jobs == Counter(
        {
            ("discover", f"shard=1, num_shards={NUM_SHARDS}"): 1,
            ("cluster", ""): 1,
            ("distill_train", ""): 1,
            ("segment_train", "round=0"): 1,
            **{("distill_predict", shard): 1 for shard in shards},
            **{("select", shard): 1 for shard in shards},
            **{("segment_predict", wildcards): 1 for wildcards in final},
            **{("visualize_sheet", f"stage={stage}"): 1 for stage in SHEETS},
            ("visualize_plots", ""): 1,
            ("run_view", ""): 1,
        }
    )
    # the new image's shard manifest is the one rewritten: it names the image
    manifests = sorted(folder.glob("results/.manifests/*/*.tsv"), key=lambda p: p.name)
    assert [new in p.read_text() for p in manifests] == [i == 1 for i in range(NUM_SHARDS)]
    stamps = {p.name: p.stat().st_mtime_ns for p in manifests}
    planned_jobs(folder)  # parsing again rewrites no manifest
    assert stamps == {p.name: p.stat().st_mtime_ns for p in manifests}
    # the partial rerun gives a complete, consistent pseudo ground truth
    snakemake(folder, "--cores", "2")
    shards = sorted((folder / "results/folder/cluster/pseudo_gt").glob("shard-*.json"))
    assert len(shards) == NUM_SHARDS
    coco = read_pseudo_gt([str(path) for path in shards])
    names = sorted(p.name for p in (folder / "images").iterdir())
    assert sorted(image["file_name"] for image in coco["images"]) == names
    assert len({image["id"] for image in coco["images"]}) == len(names)


# ---------------------------------------------------------------- presets for real runs


def _fake_tree(root: Path, kind: str) -> dict:
    """An empty dataset tree of the preset's layout; returns the dataset paths to use."""
    images = root / kind / ("JPEGImages" if kind == "voc" else "images")
    images.mkdir(parents=True)
    for seed, name in enumerate(["a.jpg", "b.jpg", "c.jpg"]):
        _write_image(images / name, seed)
    if kind == "voc":
        sets = root / kind / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True)
        (sets / "trainaug.txt").write_text("a\nb\n")
        (sets / "val.txt").write_text("c\n")
        return {"root": str(root / kind)}
    if kind == "coco":
        (root / kind / "instances.json").write_text('{"images": [], "annotations": []}')
        (root / kind / "list.txt").write_text("a.jpg\nb.jpg\n")
        return {
            "root": str(images),
            "annotations": str(root / kind / "instances.json"),
            "image_list": str(root / kind / "list.txt"),
        }
    return {"root": str(images)}


@pytest.mark.parametrize(
    ("preset", "evaluated"), [("voc12", True), ("coco20k", True), ("folder", False)]
)
def test_presets_are_valid_and_plan_the_full_method(tmp_path, repo, preset, evaluated):
    config = yaml.safe_load((repo / "configs" / f"{preset}.yaml").read_text())
    config = validate_config(config)  # the schema, with every default filled in
    assert config["discover"]["backbone"] == "vit_small_patch16_224.dino"
    assert (config["discover"]["resize"], config["discover"]["heads"]) == (640, 5)
    assert (config["discover"]["topk"], config["discover"]["mass"]) == (0.4, 0.5)
    assert config["cluster"]["seed"] == 1234 and not config["pretrain"]["enabled"]
    assert config["resources"]["discover"]["gpu"] == 1
    distill = config["distill"]
    assert (distill["arch"], distill["fpn_channels"], distill["box_head_dim"]) == (
        "resnet50",
        256,
        1024,
    )
    assert (distill["batch_size"], distill["lr"], distill["test_size"]) == (16, 0.02, 800)
    config["dataset"].update(_fake_tree(tmp_path / "data", config["dataset"]["kind"]))
    config["cluster"]["k"] = 1  # the fake trees hold 2-3 images (K-means needs one per cluster)
    small = {"distill": 2, "segment": 2, "probe": 2}  # batches the fake trees can fill
    for section, batch in small.items():
        config[section]["batch_size"] = batch
    datasets = 1
    if config["cluster"]["support_dataset"] is not None:  # voc12: VOC07 trainval, discovered too
        support = config["cluster"]["support_dataset"]
        sets = tmp_path / "voc07" / "ImageSets" / support["imagesets"]
        sets.mkdir(parents=True)
        (tmp_path / "voc07" / "JPEGImages").mkdir()
        (sets / "trainval.txt").write_text("c\n")
        support["root"] = str(tmp_path / "voc07")
        datasets = 2
    workspace = make_workspace(tmp_path / "workflow", config)
    if distill["init"] != "none":  # the preset's MoCo v2 file, which the user downloads
        (workspace / distill["init"]).parent.mkdir(parents=True)
        torch.save({"state_dict": {}}, workspace / distill["init"])
    if preset == "voc12" and not crf_available():
        pytest.skip("the VOC12 preset refines with the dense CRF: pip install '.[crf]'")
    jobs = rules_of(planned_jobs(workspace))
    shards = config["discover"]["num_shards"]
    expected = Counter({"discover": datasets * shards}) + after_discover(shards, evaluated)
    if preset == "voc12":  # the paper's full table: CRF, one CRF round, the linear probe
        # round 1 and the probe; round 0's CRF labels of the learning images; with CRF the
        # eval predictions of round 0, and of round 1 and the probe with and without
        expected.update(segment_train=1, segment_probe=1, segment_predict=6 * shards)
        expected.update(evaluate_segment=5)
    assert jobs == expected


def _command_flags(text: str, command: str) -> str:
    """The first shell line of a dry run (``-p``) that runs ``maskdistill <command>``."""
    return next(line for line in text.splitlines() if f"maskdistill {command} " in line)


@pytest.mark.parametrize("preset", ["voc12", "coco20k", "folder"])
def test_a_preset_stands_alone_on_the_schema_defaults(tmp_path, repo, preset):
    """The demo's config.yaml lies in the workflow folder, the preset comes with --configfile:
    no setting of the planned jobs comes from config.yaml."""
    from maskdistill.workflow import cli_flags

    demo = yaml.safe_load((repo / "config.yaml").read_text())
    workspace = make_workspace(tmp_path / "workflow", demo)
    chosen = yaml.safe_load((repo / "configs" / f"{preset}.yaml").read_text())
    chosen["dataset"].update(_fake_tree(tmp_path / "data", chosen["dataset"]["kind"]))
    chosen["cluster"] = {**chosen["cluster"], "k": 1, "support_dataset": None}
    for section in ("distill", "segment", "probe"):
        chosen[section] = {**chosen.get(section, {}), "batch_size": 2}
    chosen["segment"]["crf"], chosen["segment"]["crf_rounds"] = False, 0
    (workspace / "preset.yaml").write_text(yaml.safe_dump(chosen))
    effective = validate_config(json.loads(json.dumps(chosen)))
    for section in ("distill", "segment"):
        init = effective[section]["init"]
        if init != "none":  # the preset's MoCo v2 file, which the user downloads
            (workspace / init).parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state_dict": {}}, workspace / init)
    result = snakemake(workspace, "-n", "-p", "--cores", "1", "--configfile", "preset.yaml")
    text = result.stdout
    for section, command in (("distill", "distill train"), ("segment", "segment train")):
        line = _command_flags(text, command)
        leaked = []
        for key, demo_value in demo[section].items():
            value = effective[section][key]
            flag = cli_flags({key: value})
            if flag and f" {flag}" in line:
                continue
            if demo_value != value and f" {cli_flags({key: demo_value})} " in line + " ":
                leaked.append(key)
        assert not leaked, f"{section} settings from config.yaml: {leaked}"
        assert f"--lr {effective[section]['lr']}" in line
    assert f"--fpn-channels {effective['distill']['fpn_channels']}" in text  # 256, not 64
    assert "--clip-grad 0" in _command_flags(text, "distill train")  # not the demo's 10


def _folder_workspace(tmp_path: Path, names: list[str], **sections) -> Path:
    """A tiny-config workspace over the folder ``images/`` holding one generated image per name."""
    config = tiny_config(
        demo_data={"generate": False},
        dataset={"kind": "folder", "root": "images", "eval_split": None},
        cluster={"k": 2},
        **sections,
    )
    workspace = make_workspace(tmp_path / "workflow", config)
    (workspace / "images").mkdir()
    for seed, name in enumerate(names):
        _write_image(workspace / "images" / name, seed)
    return workspace


def _numbered(count: int) -> list[str]:
    return [f"img{i:02d}.png" for i in range(count)]


def test_on_bad_image_error_after_skip_fails_the_dry_run_naming_the_file(tmp_path):
    workspace = _folder_workspace(tmp_path, _numbered(6), on_bad_image="skip")
    (workspace / "images" / "broken.png").write_bytes(b"not a png")
    result = snakemake(workspace, "-n", "--cores", "1")
    shards = sorted({w for w in result.stdout.split() if w.endswith(".h5")})
    snakemake(workspace, "--cores", "2", *shards)  # discover only, under skip
    config = yaml.safe_load((workspace / "config.yaml").read_text()) | {"on_bad_image": "error"}
    write_config(workspace, config)
    result = snakemake(workspace, "-n", "--cores", "1", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "broken.png" in output
    assert "set on_bad_image: skip" in output and "delete" in output


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"segment": {"batch_size": 16}}, "config key 'segment.batch_size': a batch of 16"),
        ({"distill": {"batch_size": 16}}, "config key 'distill.batch_size': a batch of 16"),
        ({"segment": {"epochs": 3, "lr_epochs": [2]}}, "config key 'segment.lr_epochs'"),
    ],
)
def test_batches_and_schedules_that_cannot_work_fail_the_dry_run(tmp_path, sections, message):
    workspace = _folder_workspace(tmp_path, _numbered(10), **sections)
    result = snakemake(workspace, "-n", "--cores", "1", check=False)
    assert result.returncode != 0 and message in result.stdout + result.stderr


def test_a_text_file_as_weights_fails_the_dry_run_and_the_old_model_survives(demo, tmp_path):
    fake = tmp_path / "weights.pth"
    fake.write_text("this is not a checkpoint\n")
    model = demo / "results" / "tiny" / "segment" / "round-0" / "model.pth"
    before = model.read_bytes()
    args = variant(demo, "textinit", segment={"init": str(fake)})
    result = snakemake(demo, "--cores", "1", *args, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "config key 'segment.init'" in output
    assert "not a weights file" in output and model.read_bytes() == before
