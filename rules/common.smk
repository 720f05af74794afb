# What the stages share: config validation, the top-level paths, the content key of a
# content-addressed cache folder, the helper that turns settings into command-line flags, the
# functions about datasets and shards, and, in one section per stage, the input and parameter
# functions of the stages' rules. Each stage's own paths and outputs are constants in its
# rules/<stage>.smk; its functions live here because Snakemake's linter asks that a rule file
# holds no function (as in snakemake-workflows, whose input functions live in common.smk).
#
# The rules of every stage share one pattern (docs/workflow.md):
#   threads: RESOURCES["<stage>"]["threads"]; resources: mem_mb, runtime, gpu from the same entry
#     (resources only, never params, so that changing them reruns nothing);
#   params: code=code_fingerprint("maskdistill.commands.<command>") (editing the job's code
#     reruns it; a training job's command is commands/<stage>_train.py, so that an edit to the
#     training loop changes no prediction job) and the stage's settings as flags=cli_flags(...);
#   GPU stages prefix their shell command with
#     "maskdistill gpu-run --gpus {resources.gpu} --lock-dir {params.gpu_locks:q} -- "
#     and pass gpu_locks=GPU_LOCKS (workstation pinning; a no-op under SLURM).
import os
import re
from pathlib import Path

from maskdistill import preflight
from maskdistill.config import validate_config
from maskdistill.images import MAX_PIXELS_VARIABLE
from maskdistill.workflow import (
    cli_flags,
    code_fingerprint,
    console_warning,
    content_key,
    split_folder,
    without,
)

validate_config(config)  # the schema's checks and defaults (maskdistill/schemas/)
# every job (a child of this process, or a cluster job that parses this file again) reads it
os.environ[MAX_PIXELS_VARIABLE] = str(config["max_pixels"])

RESULTS = Path(config["results_dir"])
CACHE = RESULTS / "cache"
RUN = RESULTS / config["run_name"]
LOGS = RUN / "logs"
BENCHMARKS = RUN / "benchmarks"
GPU_LOCKS = RESULTS / ".gpu-locks"
MANIFESTS = RESULTS / ".manifests"  # a folder dataset's shard manifests
RESOURCES = config["resources"]
# a training job's end (execution: passed as a resource, so changing it reruns nothing)
KEEP_CHECKPOINTS = (
    "--keep-checkpoints" if config["keep_checkpoints"] else "--no-keep-checkpoints"
)
DATASET = config["dataset"]


def _inside_results(path):
    """True when `path` lies inside the results folder (the only place the workflow writes)."""
    return Path(path).resolve().is_relative_to(RESULTS.resolve())


if config["demo_data"]["generate"] and not _inside_results(DATASET["root"]):
    raise ValueError(
        f"config key 'dataset.root' ({DATASET['root']!r}): with demo_data.generate the demo "
        f"dataset is written there, so it must lie inside results_dir ({str(RESULTS)!r})"
    )


def learning_view(dataset):
    """What a learning stage reads of a dataset spec: everything but the evaluation split."""
    return without(dataset, "eval_split")


def dataset_ready():
    """What jobs reading the dataset wait for: the generated demo tree, or nothing."""
    return [DATASET["root"]] if config["demo_data"]["generate"] else []


def dataset_args(splits=None, dataset=DATASET):
    """The dataset part of a command line (default: the learning splits), quoted."""
    splits = dataset["learn_splits"] if splits is None else splits
    return cli_flags(
        {
            "dataset_kind": dataset["kind"],
            "images": dataset["root"],
            "imagesets": dataset["imagesets"],
            "splits": list(splits),
            "annotations": dataset["annotations"],
            "image_list": dataset["image_list"],
        }
    )


def evaluation_enabled():
    """Whether the config names an evaluation split of a dataset that has ground truth."""
    if DATASET["kind"] == "coco" and DATASET["annotations"] is None:
        return False
    return DATASET["eval_split"] is not None and DATASET["kind"] != "folder"


if (
    evaluation_enabled()
    and DATASET["kind"] == "voc"
    and DATASET["eval_split"] not in DATASET["learn_splits"]
):
    raise ValueError(
        f"config key 'dataset.eval_split' ({DATASET['eval_split']!r}) is not one of "
        f"dataset.learn_splits {DATASET['learn_splits']}: stages 1 and 2 only see the learning "
        "images, so their metrics need the evaluation split among them (the reference learns on "
        "trainval and evaluates on val)"
    )


# ---------------------------------------------------------------- datasets and shards (every stage)


def shard_paths(folder, num_shards, suffix=".h5"):
    """The files of a sharded output: folder/shard-<i>-of-<S><suffix> for i < S."""
    return [
        Path(folder) / f"shard-{i}-of-{num_shards}{suffix}" for i in range(num_shards)
    ]


def _folder_images(root):
    """The image files of a folder dataset (relative paths), listed once per parse (however many
    runs a sweep has); the files of unsupported types are named on the console."""
    from maskdistill.data.folder import IMAGE_SUFFIXES
    from maskdistill.manifests import folder_listing

    found, others = folder_listing(str(root))
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        console_warning(
            f"{len(others)} files under {root} are not images of a supported type "
            f"({' '.join(sorted(IMAGE_SUFFIXES))}) and are left out: {shown}"
        )
    return list(found)


def warn_about_skipped_images(discover_shards, run):
    """The skip lists of a run that name images, on the console (on_bad_image: skip)."""
    from maskdistill.run_view import skipped_image_notes

    for note in skipped_image_notes(discover_shards, run):
        console_warning(note)


def image_lists(dataset):
    """The files that list a VOC or COCO dataset's images (none for folders or the demo)."""
    generated = dataset is DATASET and config["demo_data"]["generate"]
    if generated or dataset["kind"] == "folder":
        return []  # the demo's lists lie inside the generated tree, an output
    if dataset["kind"] == "voc":
        sets = Path(dataset["root"]) / "ImageSets" / dataset["imagesets"]
        return [sets / f"{split}.txt" for split in dataset["learn_splits"]]
    return [
        dataset[key]
        for key in ("annotations", "image_list")
        if dataset[key] is not None
    ]


def shard_images(dataset, shard, num_shards):
    """What one shard's images depend on, so that changing the data reruns only what it must.

    Folder datasets: the shard's manifest (maskdistill/manifests.py: its images' names, sizes
    and times, rewritten only when they change), so that adding images reruns only the shards
    they land in (an image's shard is crc32(file name) % num_shards) and the DAG holds one file
    per shard. VOC and COCO: the image lists (editing them reruns every shard).
    """
    if dataset["kind"] != "folder":
        return image_lists(dataset)
    return [shard_manifests(dataset["root"], int(num_shards))[int(shard)]]


def shard_manifests(root, num_shards):
    """The shard manifests of an image folder (results/.manifests/<key>/), written from one
    listing of the folder by Snakemake's main process; a cluster job, which parses the
    workflow again, only names them."""
    from maskdistill.manifests import folder_manifests, manifest_paths

    folder = MANIFESTS / content_key("manifests", str(Path(root).resolve()))
    if not workflow.is_main_process:
        return manifest_paths(folder, num_shards)
    return folder_manifests(str(root), num_shards, str(folder))


def job_shard(files, wildcards):
    """The file of a sharded job's shard among a sharded output's ``files`` (shard_paths)."""
    if int(wildcards.num_shards) != len(files):
        raise ValueError(
            f"shard {wildcards.shard} of {wildcards.num_shards}: the files are "
            f"{len(files)} shards ({files[0]}, ...)"
        )
    return files[int(wildcards.shard)]


# ---------------------------------------------------------------- stage 5 (rules/segment.smk)


def segment_title(net, mode):
    """The metrics-table row of a stage-5 network's predictions."""
    name = "linear probe" if net == "probe" else "stage 5: segment"
    rounds = (
        ""
        if net in ("probe", "round-0")
        else f", CRF round {net.removeprefix('round-')}"
    )
    crf = " with CRF" if mode == "crf" else ""
    return f"{name}{rounds}{crf}"


def images_folder(splits):
    """The folder name of the images of a VOC dataset's ``splits`` (maskdistill.workflow's
    split_folder); `all` for the other kinds, whose splits are all their images."""
    return split_folder(splits) if DATASET["kind"] == "voc" else "all"


def net_folder(net):
    """The folder of a stage-5 network in SEGMENT_DIR: round-<r>, or the probe's keyed one."""
    return PROBE_FOLDER if net == "probe" else net


def prediction_dirs(net, mode, split):
    """The shard folders of a stage-5 network's predictions (rules/segment.smk) of the images
    of ``split`` (eval, learn or train: SPLITS)."""
    folder = SEGMENT_DIR / net_folder(net) / mode / images_folder(SPLITS[split])
    return [folder / f"shard-{i}-of-{SEGMENT_SHARDS}" for i in range(SEGMENT_SHARDS)]


def prediction_resource(wildcards, key):
    """A stage-5 prediction job's resource: of segment_crf for CRF jobs, else segment_predict."""
    return RESOURCES["segment_crf" if wildcards.mode == "crf" else "segment_predict"][
        key
    ]


def training_labels(wildcards):
    """Stage-5 round 0 learns from the stage-4 maps, round r from round r-1's CRF predictions
    of the training images (segment.train_splits)."""
    r = int(wildcards.round)
    return (
        SELECT_LABELS if r == 0 else prediction_dirs(f"round-{r - 1}", "crf", "train")
    )


# ---------------------------------------------------------------- the target `all` (Snakefile)


def final_outputs():
    """The inputs of the target `all`: the final output of every stage that exists, and the
    pictures.

    The stage files define the constants it reads. Stage 5's final predictions are those of
    the last CRF round: on the evaluation split when there is ground truth, else on the
    learning images (a folder's final segmentation).
    """
    split = "eval" if evaluation_enabled() else "learn"
    modes = ["labels"] + (["crf"] if USES_CRF else [])
    final = [d for mode in modes for d in prediction_dirs(LAST_NET, mode, split)]
    return (
        dataset_ready()
        + DISCOVER_SHARDS
        + CLUSTER_OUTPUTS
        + [DISTILL_MODEL]
        + DISTILL_SHARDS
        + SELECT_LABELS
        + [SEGMENT_DIR / LAST_NET / "model.pth"]
        + final
        + EVALUATE_OUTPUTS
        + PICTURES
        + [RUN_MANIFEST]
    )


# ---------------------------------------------------------------- metrics (rules/evaluate.smk)


def segment_report(name):
    """(net, mode) of a stage-5 report name: ``segment-round-1-crf`` -> (round-1, crf)."""
    return name.removeprefix("segment-").rsplit("-", 1)


def evaluation_inputs(wildcards):
    """The files a metrics JSON (rules/evaluate.smk) is computed from, by report name."""
    name = wildcards.report
    inputs = {"dataset": dataset_ready()}
    if name == "discovery":
        return inputs | {"shards": DISCOVER_SHARDS}
    inputs["pseudo_gt"] = PSEUDO_GT
    if (
        NAMING is not None
        and name != "cluster"
        and not name.startswith("segment-probe")
    ):
        inputs["naming"] = NAMING  # named as stage 2's clusters were
    if name == "distill":
        inputs["predictions"] = DISTILL_SHARDS
    elif name == "select":
        inputs |= {"labels": SELECT_LABELS, "select_stats": SELECT_STATS}
    elif name.startswith("segment-"):
        net, mode = segment_report(name)
        inputs["labels"] = prediction_dirs(net, mode, "eval")
    return inputs


def evaluation_command(wildcards):
    """The `maskdistill evaluate` subcommand and flags that write a metrics JSON (a function of
    the wildcards alone: Snakemake compares such params with the last run's, and reruns on a
    change, but not params that read `input`).

    Every report scores the evaluation split, but stage 4's maps, which label the
    learning images: they are scored there, as pseudo-label quality.
    """
    name = wildcards.report
    files = without(evaluation_inputs(wildcards), "dataset")
    splits = None if name == "select" else [DATASET["eval_split"]]
    flags = f"{cli_flags(files)} {dataset_args(splits)}"
    if name in ("discovery", "distill"):
        return f"{name} {flags}"
    if name == "cluster":
        matching = {
            "matching": EVALUATE["matching"],
            "matching_splits": DATASET["learn_splits"],
        }
        return f"cluster {flags} {cli_flags(matching)}"
    if name == "select":
        title, extra = "stage 4: select", {"missing": "skip"}
    else:
        net, mode = segment_report(name)
        title, extra = segment_title(net, mode), {"supervised": net == "probe" or None}
    return f"labels {flags} {cli_flags({'title': title, **extra})}"


# ---------------------------------------------------------------- pictures (rules/visualize.smk)


def sheet_inputs(wildcards):
    """The files a stage's contact sheet draws from (rules/visualize.smk)."""
    stage = wildcards.stage
    everything = stage == "overview"
    inputs = {"dataset": dataset_ready()}
    if everything or stage == "discover":
        inputs["shards"] = DISCOVER_SHARDS
    if stage != "discover":
        inputs["pseudo_gt"] = PSEUDO_GT
        if evaluation_enabled():
            inputs["cluster_metrics"] = EVALUATE_DIR / "cluster.json"
    if everything or stage == "distill":
        inputs["predictions"] = DISTILL_SHARDS
    if everything or stage == "select":
        inputs["selected"] = SELECT_LABELS
    if everything or stage == "segment":
        inputs["segmented"] = prediction_dirs(LAST_NET, "labels", FINAL_SPLIT)
    if stage == "segment" and USES_CRF:
        inputs["refined"] = prediction_dirs(LAST_NET, "crf", FINAL_SPLIT)
    return inputs


def sheet_flags(wildcards, input):
    """The command-line flags naming a contact sheet's inputs (all but the dataset)."""
    return cli_flags(
        {
            name: getattr(input, name)
            for name in sheet_inputs(wildcards)
            if name != "dataset"
        }
    )


# what can be checked before any job starts, so that a dry run fails with the setting's name
# (by Snakemake's main process: a cluster job, which parses the workflow again, lists nothing)
if workflow.is_main_process:
    preflight.check_config(config, _folder_images)
    for _dataset in filter(None, (DATASET, config["cluster"]["support_dataset"])):
        if _dataset is DATASET and config["demo_data"]["generate"]:
            continue  # written by the workflow
        for _name, _why in preflight.check_image_names(
            _dataset, config["on_bad_image"], _folder_images
        ):
            console_warning(f"{_why}: left out (on_bad_image: skip)")
for _spec in (config["discover"]["backbone"], config["discover"]["feature_backbone"]):
    if _spec.startswith("random:") and not config["pretrain"]["enabled"]:
        console_warning(
            f"discover backbone {_spec!r} is a random ViT: its masks are noise (set "
            "discover.backbone to vit_small_patch16_224.dino or a checkpoint file)"
        )
