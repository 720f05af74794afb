# Stage 4, select: the confident Mask R-CNN predictions of every learning image painted into one
# palette PNG label map per image (the training labels of stage 5), and what was kept; one job
# per shard (the shards of stage 3's predictions), so that no job holds the dataset's
# predictions or maps.
SELECT = config["select"]
# segment.labels pseudo_gt: the stage-2 masks painted as stage 4 paints (each one a prediction of
# score 1), for stage 5 to learn from (the first row of the paper's Table 1)
FROM_PSEUDO_GT = config["segment"]["labels"] == "pseudo_gt"
SELECT_DIR = (
    CACHE
    / "select"
    / (
        content_key("select", CLUSTER_KEY, "pseudo_gt")
        if FROM_PSEUDO_GT
        else content_key("select", DISTILL_KEY, SELECT)
    )
)
# labels/shard-<i>-of-<S>/<file name stem>.png per image, stats/shard-<i>-of-<S>.json
SELECT_LABELS = shard_paths(SELECT_DIR / "labels", DISCOVER["num_shards"], "")
SELECT_STATS = shard_paths(SELECT_DIR / "stats", DISCOVER["num_shards"], ".json")


rule select:
    input:
        predictions=lambda w: job_shard(
            PSEUDO_GT if FROM_PSEUDO_GT else DISTILL_SHARDS, w
        ),
        pseudo_gt=lambda w: job_shard(PSEUDO_GT, w),
    output:
        labels=directory(SELECT_DIR / "labels" / "shard-{shard}-of-{num_shards}"),
        stats=SELECT_DIR / "stats" / "shard-{shard}-of-{num_shards}.json",
    log:
        LOGS / "select" / "shard-{shard}-of-{num_shards}.log",
    benchmark:
        BENCHMARKS / "select" / "shard-{shard}-of-{num_shards}.tsv"
    wildcard_constraints:
        shard=r"\d+",
        num_shards=r"\d+",
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["select"]["threads"]
    resources:
        mem_mb=RESOURCES["select"]["mem_mb"],
        runtime=RESOURCES["select"]["runtime"],
    params:
        code=code_fingerprint("maskdistill.commands.select"),
        flags=cli_flags(SELECT | {"from_annotations": FROM_PSEUDO_GT or None}),
    shell:
        "maskdistill select --predictions {input.predictions:q} --pseudo-gt {input.pseudo_gt:q}"
        " --shard {wildcards.shard} --num-shards {wildcards.num_shards} {params.flags}"
        " --out {output.labels:q} --stats {output.stats:q} 2> {log:q}"
