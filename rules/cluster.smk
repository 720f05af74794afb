# Stage 2, cluster: K-means over the features of every discovered mask (optionally together with
# a support set's) -> COCO pseudo ground truth (category_id = 1 + cluster index), one file per
# discover shard (the shards of every later stage), + stats.
CLUSTER = config["cluster"]
CLUSTER_SETTINGS = ("k", "overcluster", "kmeans", "seed")
# content addressed by the discover shards it reads (their keys), shards given by path, and
# its settings: runs that share them share the pseudo ground truth (and all that follows)
CLUSTER_KEY = content_key(
    "cluster",
    TARGET_KEY,
    SUPPORT_KEY if SUPPORT is not None else None,
    CLUSTER["support_shards"],
    {key: CLUSTER[key] for key in CLUSTER_SETTINGS},
)
CLUSTER_DIR = CACHE / "cluster" / CLUSTER_KEY
# the training set of stage 3: pseudo_gt/shard-<i>-of-<S>.json, the images of discover shard i
PSEUDO_GT = shard_paths(CLUSTER_DIR / "pseudo_gt", DISCOVER["num_shards"], ".json")
CLUSTER_OUTPUTS = PSEUDO_GT + [CLUSTER_DIR / "stats.json"]


rule cluster:
    input:
        shards=DISCOVER_SHARDS,
        support=CLUSTER["support_shards"] + SUPPORT_SHARDS,
    output:
        pseudo_gt=PSEUDO_GT,
        stats=report(
            CLUSTER_DIR / "stats.json",
            caption="../report/cluster_stats.rst",
            category="cluster",
        ),
    log:
        LOGS / "cluster.log",
    benchmark:
        BENCHMARKS / "cluster.tsv"
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["cluster"]["threads"]
    resources:
        mem_mb=RESOURCES["cluster"]["mem_mb"],
        runtime=RESOURCES["cluster"]["runtime"],
        gpu=RESOURCES["cluster"]["gpu"],
    params:
        code=code_fingerprint("maskdistill.commands.cluster"),
        flags=cli_flags({key: CLUSTER[key] for key in CLUSTER_SETTINGS}),
    shell:
        "maskdistill cluster --shards {input.shards:q} --support-shards {input.support:q}"
        " {params.flags} --threads {threads}"
        " --out {output.pseudo_gt:q} --stats {output.stats:q} 2> {log:q}"
