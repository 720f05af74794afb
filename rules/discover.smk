# Stage 1, discover: one object mask (+ box, clustering feature, attention map) per image,
# one HDF5 shard per job, for the dataset and the optional support set. Shards are content
# addressed: runs whose dataset and discover settings are equal share them
# (RESULTS/cache/discover/<key>/, see discover_key in common.smk).
rule discover:
    input:
        dataset=discover_dataset_ready,
        images=discover_images,
        backbones=_backbone_files(),
    output:
        shard=RESULTS
        / "cache"
        / "discover"
        / "{key}"
        / "shard-{shard}-of-{num_shards}.h5",
    log:
        LOGS / "discover" / "{key}" / "shard-{shard}-of-{num_shards}.log",
    benchmark:
        BENCHMARKS / "discover" / "{key}" / "shard-{shard}-of-{num_shards}.tsv"
    wildcard_constraints:
        key=r"[0-9a-f]{12}",
        shard=r"\d+",
        num_shards=r"\d+",
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["discover"]["threads"]
    resources:
        mem_mb=RESOURCES["discover"]["mem_mb"],
        runtime=RESOURCES["discover"]["runtime"],
        gpu=RESOURCES["discover"]["gpu"],
        batch_size=RESOURCES["discover"]["batch_size"],
        workers=RESOURCES["discover"]["workers"],
    params:
        code=code_fingerprint("maskdistill.commands.discover"),
        gpu_locks=GPU_LOCKS,
        dataset=discover_dataset_args,
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
        device=DISCOVER["device"],
        on_bad_image=config["on_bad_image"],
    shell:
        "maskdistill gpu-run --gpus {resources.gpu} --lock-dir {params.gpu_locks:q} --"
        " maskdistill discover {params.dataset} --out {output.shard:q}"
        " --shard {wildcards.shard} --num-shards {wildcards.num_shards}"
        " --backbone {params.backbone:q} {params.num_heads}"
        " --feature-backbone {params.feature_backbone:q} --feature {params.feature}"
        " --resize {params.resize} --heads {params.heads} --topk {params.topk}"
        " --mass {params.mass} {params.center_keys} --precision {params.precision}"
        " --batch-size {resources.batch_size} --workers {resources.workers}"
        " --device {params.device} --threads {threads}"
        " --on-bad-image {params.on_bad_image} 2> {log:q}"
