# Stage 1, discover: one object mask (+ box, clustering feature, attention map) per image,
# one HDF5 shard per job, for the dataset and the optional support set. Shards are content
# addressed (CACHE/discover/<key>/): runs whose learning images and discover settings are equal
# share them, whatever their run name, evaluation split or execution settings.
from maskdistill.models.specs import weight_files

DISCOVER = config["discover"]
SUPPORT = config["cluster"]["support_dataset"]
# settings that never change a shard's content: not in the key, not rule params
DISCOVER_EXECUTION = ("num_shards", "device")
# the backbone actually used: the pretrain stage's output when it is enabled (its own content
# key is in its path)
DISCOVER_BACKBONE = (
    str(PRETRAINED_BACKBONE) if config["pretrain"]["enabled"] else DISCOVER["backbone"]
)
DISCOVER_SETTINGS = without(DISCOVER, *DISCOVER_EXECUTION) | {
    "backbone": DISCOVER_BACKBONE
}
# content key -> dataset spec, for every dataset discover runs on (the key covers the images
# discovery reads and the settings that decide a shard's content): the target, then the
# support set
DISCOVER_DATASETS = {
    content_key("discover", learning_view(dataset), DISCOVER_SETTINGS): dataset
    for dataset in (DATASET, SUPPORT)
    if dataset is not None
}
TARGET_KEY, SUPPORT_KEY = list(DISCOVER_DATASETS)[0], list(DISCOVER_DATASETS)[-1]
DISCOVER_SHARDS = shard_paths(CACHE / "discover" / TARGET_KEY, DISCOVER["num_shards"])
SUPPORT_SHARDS = (
    []
    if SUPPORT is None
    else shard_paths(CACHE / "discover" / SUPPORT_KEY, DISCOVER["num_shards"])
)
preflight.check_cached_skips(DISCOVER_SHARDS + SUPPORT_SHARDS, config["on_bad_image"])


rule discover:
    input:
        dataset=lambda w: dataset_ready() if DISCOVER_DATASETS[w.key] is DATASET else [],
        images=lambda w: shard_images(DISCOVER_DATASETS[w.key], w.shard, w.num_shards),
        backbones=weight_files([DISCOVER_BACKBONE, DISCOVER["feature_backbone"]]),
    output:
        shard=CACHE / "discover" / "{key}" / "shard-{shard}-of-{num_shards}.h5",
    log:
        LOGS / "discover" / "{key}" / "shard-{shard}-of-{num_shards}.log",
    benchmark:
        BENCHMARKS / "discover" / "{key}" / "shard-{shard}-of-{num_shards}.tsv"
    wildcard_constraints:
        # this run's keys only: in a sweep, each run's discover rule makes its own datasets'
        key="|".join(DISCOVER_DATASETS),
        shard=r"\d+",
        num_shards=r"\d+",
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["discover"]["threads"]
    resources:
        mem_mb=RESOURCES["discover"]["mem_mb"],
        runtime=RESOURCES["discover"]["runtime"],
        gpu=RESOURCES["discover"]["gpu"],
        # execution settings: resources, so that changing them reruns nothing
        batch_size=RESOURCES["discover"]["batch_size"],
        workers=RESOURCES["discover"]["workers"],
        device=DISCOVER["device"],
        # unreadable images: a finished output is the same either way (skips are listed)
        on_bad_image=config["on_bad_image"],
    params:
        code=code_fingerprint("maskdistill.commands.discover"),
        gpu_locks=GPU_LOCKS,
        dataset=lambda w: dataset_args(dataset=DISCOVER_DATASETS[w.key]),
        flags=cli_flags(DISCOVER_SETTINGS),
    shell:
        "maskdistill gpu-run --gpus {resources.gpu} --lock-dir {params.gpu_locks:q} --"
        " maskdistill discover {params.dataset} {params.flags} --out {output.shard:q}"
        " --shard {wildcards.shard} --num-shards {wildcards.num_shards}"
        " --batch-size {resources.batch_size} --workers {resources.workers}"
        " --device {resources.device} --threads {threads}"
        " --on-bad-image {resources.on_bad_image} 2> {log:q}"
