# Stage 1, discover: one object mask (+ box, clustering feature, attention map) per image,
# one HDF5 shard per job. Shards are content addressed: runs whose dataset and discover
# settings are equal share them (RESULTS/cache/discover/<key>/).
import shlex

DISCOVER = config["discover"]
# with the pretrain stage enabled its settings decide the backbone, so they are part of the key
_DISCOVER_KEY_SECTIONS = ["dataset", "discover"] + (
    ["pretrain"] if config["pretrain"]["enabled"] else []
)
DISCOVER_DIR = RESULTS / "cache" / "discover" / settings_key(*_DISCOVER_KEY_SECTIONS)


def discover_shards():
    """Every shard the configured discover settings produce."""
    return expand(
        str(DISCOVER_DIR / "shard-{shard}-of-{num_shards}.h5"),
        shard=range(DISCOVER["num_shards"]),
        num_shards=DISCOVER["num_shards"],
    )


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


def _dataset_args(splits=None):
    """The dataset part of a command line (default: the learning splits), quoted."""
    splits = DATASET["learn_splits"] if splits is None else splits
    args = ["--dataset-kind", DATASET["kind"], "--images", DATASET["root"]]
    args += ["--imagesets", DATASET["imagesets"], "--splits", *splits]
    for flag, key in (("--annotations", "annotations"), ("--image-list", "image_list")):
        if DATASET[key] is not None:
            args += [flag, DATASET[key]]
    return shlex.join(args)


rule discover:
    input:
        dataset=dataset_ready(),
        backbones=_backbone_files(),
    output:
        shard=DISCOVER_DIR / "shard-{shard}-of-{num_shards}.h5",
    log:
        LOGS / "discover" / "shard-{shard}-of-{num_shards}.log",
    benchmark:
        BENCHMARKS / "discover" / "shard-{shard}-of-{num_shards}.tsv"
    wildcard_constraints:
        shard=r"\d+",
        num_shards=r"\d+",
    conda:
        "../envs/maskdistill.yaml"
    threads: DISCOVER["threads"]
    resources:
        mem_mb=DISCOVER["mem_mb"],
        runtime=DISCOVER["runtime"],
        gpu=DISCOVER["gpu"],
    params:
        dataset=_dataset_args(),
        backbone=discover_backbone(),
        num_heads=(
            f"--num-heads {DISCOVER['num_heads']}"
            if DISCOVER["num_heads"] is not None
            else ""
        ),
        feature_backbone=DISCOVER["feature_backbone"],
        feature=DISCOVER["feature"],
        resize=DISCOVER["resize"],
        heads=DISCOVER["heads"],
        topk=DISCOVER["topk"],
        mass=DISCOVER["mass"],
        center_keys="--center-keys" if DISCOVER["center_keys"] else "",
        precision=DISCOVER["precision"],
        batch_size=DISCOVER["batch_size"],
        workers=DISCOVER["workers"],
        device=DISCOVER["device"],
        on_bad_image=config["on_bad_image"],
    shell:
        "maskdistill discover {params.dataset} --out {output.shard:q}"
        " --shard {wildcards.shard} --num-shards {wildcards.num_shards}"
        " --backbone {params.backbone:q} {params.num_heads}"
        " --feature-backbone {params.feature_backbone:q} --feature {params.feature}"
        " --resize {params.resize} --heads {params.heads} --topk {params.topk}"
        " --mass {params.mass} {params.center_keys} --precision {params.precision}"
        " --batch-size {params.batch_size} --workers {params.workers}"
        " --device {params.device} --threads {threads}"
        " --on-bad-image {params.on_bad_image} 2> {log:q}"
