# Config validation, paths and input functions shared by every rule.
# Rules read config only through `params:` and the functions below.
import functools
import hashlib
import json
import shlex
from pathlib import Path

from snakemake.utils import validate

from maskdistill.workflow import code_fingerprint

validate(config, "../maskdistill/schemas/config.schema.yaml")

RESULTS = Path(config["results_dir"])
RUN = RESULTS / config["run_name"]
LOGS = RUN / "logs"
BENCHMARKS = RUN / "benchmarks"
DATASET = config["dataset"]
# The rules of every stage follow one pattern (README "Running the workflow"):
#   threads: RESOURCES["<stage>"]["threads"]; resources: mem_mb, runtime, gpu from the same entry
#     (resources only, never params, so that changing them reruns nothing);
#   params: code=code_fingerprint("maskdistill.commands.<command>") (editing the stage's code
#     reruns it);
#   GPU stages prefix their shell command with
#     "maskdistill gpu-run --gpus {resources.gpu} --lock-dir {params.gpu_locks:q} -- "
#     and pass gpu_locks=GPU_LOCKS (workstation pinning; a no-op under SLURM).
RESOURCES = config["resources"]
GPU_LOCKS = RESULTS / ".gpu-locks"


def _inside_results(path):
    """True when `path` lies inside the results folder (the only place the workflow writes)."""
    return Path(path).resolve().is_relative_to(RESULTS.resolve())


if config["demo_data"]["generate"] and not _inside_results(DATASET["root"]):
    raise ValueError(
        f"config key 'dataset.root' ({DATASET['root']!r}): with demo_data.generate the demo "
        f"dataset is written there, so it must lie inside results_dir ({str(RESULTS)!r})"
    )


def dataset_ready():
    """What jobs reading the dataset wait for: the generated demo tree, or nothing."""
    return [DATASET["root"]] if config["demo_data"]["generate"] else []


def cluster_outputs():
    """The stage-2 outputs: pseudo ground truth and stats."""
    return [RUN / "cluster" / "pseudo_gt.json", RUN / "cluster" / "stats.json"]


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


def metrics_reports():
    """The metrics JSONs the Markdown table shows, in stage order."""
    return [RUN / "evaluate" / "discovery.json", RUN / "evaluate" / "cluster.json"]


def evaluate_outputs():
    """The metrics table (and with it every metrics JSON), when there is ground truth."""
    return [RUN / "evaluate" / "metrics.md"] if evaluation_enabled() else []


def final_outputs():
    """The inputs of the target `all`: the final output of every stage that exists."""
    return dataset_ready() + discover_shards() + cluster_outputs() + evaluate_outputs()


def pretrained_backbone():
    """The pretrain stage's exported backbone, content addressed by the dataset and its settings."""
    key = settings_key("dataset", "pretrain")
    return RESULTS / "cache" / "pretrain" / key / "backbone.pth"


def discover_backbone():
    """The backbone discover runs: the pretrain stage's output when enabled, else the configured."""
    if config["pretrain"]["enabled"]:
        return str(pretrained_backbone())
    return config["discover"]["backbone"]


# config key -> command-line flag of `maskdistill pretrain` (training settings)
_PRETRAIN_FLAGS = (
    "views",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "global_size",
    "local_size",
    "num_local",
    "out_dim",
    "batch_size",
    "steps",
    "lr",
    "warmup_fraction",
    "teacher_temp",
    "teacher_momentum",
    "hue",
    "infonce_weight",
    "koleo_weight",
    "seed",
    "checkpoint_every",
    "device",
)


def pretrain_args():
    """The training-settings part of the pretrain command line, quoted."""
    args = []
    for key in _PRETRAIN_FLAGS:
        if config["pretrain"][key] is not None:
            args += [f"--{key.replace('_', '-')}", str(config["pretrain"][key])]
    return shlex.join(args)


def settings_key(*sections):
    """A short, stable hash of config sections: names a content-addressed output folder.

    Two runs (or two experiments with different run names) whose sections are equal share the
    folder, so the expensive stage is computed once and reused.
    """
    text = json.dumps([config.get(s) for s in sections], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# Stage 1, discover: content-addressed shard folders and input functions. Discover runs on the
# dataset and, when cluster.support_dataset is set, on that support set too (same settings).
DISCOVER = config["discover"]
SUPPORT = config["cluster"]["support_dataset"]


def discover_key(dataset):
    """The content address of `dataset`'s shards: its spec and the result-changing settings.

    With the pretrain stage enabled, its settings (and the dataset it trains on) decide the
    backbone, so they are part of the key too.
    """
    parts = [dataset, DISCOVER]
    if config["pretrain"]["enabled"]:
        parts += [DATASET, config["pretrain"]]
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# content key -> dataset spec, for every dataset discover runs on
DISCOVER_DATASETS = {discover_key(DATASET): DATASET}
if SUPPORT is not None:
    DISCOVER_DATASETS[discover_key(SUPPORT)] = SUPPORT


def discover_shards(dataset=DATASET):
    """Every shard the configured discover settings produce for `dataset`."""
    return expand(
        str(
            RESULTS
            / "cache"
            / "discover"
            / "{key}"
            / "shard-{shard}-of-{num_shards}.h5"
        ),
        key=discover_key(dataset),
        shard=range(DISCOVER["num_shards"]),
        num_shards=DISCOVER["num_shards"],
    )


def support_shards():
    """The support set's shards (clustered with the target's, not written), or none."""
    return [] if SUPPORT is None else discover_shards(SUPPORT)


def discover_dataset(wildcards):
    """The dataset spec of a discover job's content key."""
    return DISCOVER_DATASETS[wildcards.key]


def discover_dataset_ready(wildcards):
    """The generated demo tree when a discover job reads it (the support set never is one)."""
    return dataset_ready() if discover_dataset(wildcards) is DATASET else []


def _backbone_files():
    """Backbone specs that name checkpoint files (as maskdistill.vit tells them from timm names)."""
    specs = {discover_backbone(), DISCOVER["feature_backbone"]} - {"same"}
    suffixes = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
    return sorted(
        s
        for s in specs
        if not s.startswith(("random:", "hf-hub:"))
        and (s.endswith(suffixes) or "/" in s)
    )


def _dataset_args(splits=None, dataset=DATASET):
    """The dataset part of a command line (default: the learning splits), quoted."""
    splits = dataset["learn_splits"] if splits is None else splits
    args = ["--dataset-kind", dataset["kind"], "--images", dataset["root"]]
    args += ["--imagesets", dataset["imagesets"], "--splits", *splits]
    for flag, key in (("--annotations", "annotations"), ("--image-list", "image_list")):
        if dataset[key] is not None:
            args += [flag, dataset[key]]
    return shlex.join(args)


def discover_dataset_args(wildcards):
    """The dataset part of a discover job's command line."""
    return _dataset_args(dataset=discover_dataset(wildcards))


@functools.cache
def _folder_images(root):
    """The image files of a folder dataset (relative paths), listed once per parse."""
    from maskdistill.data.folder import list_images

    return list_images(Path(root))


def image_lists(dataset=DATASET):
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


def discover_images(wildcards):
    """What one shard's images depend on, so that changing the data reruns only what it must.

    Folder datasets: the shard's image files (adding images reruns only the shards they land
    in). VOC and COCO: the image lists (editing them reruns every shard).
    """
    dataset = discover_dataset(wildcards)
    if dataset["kind"] != "folder":
        return image_lists(dataset)
    from maskdistill.shards import shard_of

    num_shards, shard = int(wildcards.num_shards), int(wildcards.shard)
    root = Path(dataset["root"])
    return [
        root / name
        for name in _folder_images(dataset["root"])
        if shard_of(name, num_shards) == shard
    ]
