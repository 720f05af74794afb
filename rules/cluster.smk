# Stage 2, cluster: K-means over the features of every discovered mask (optionally together with
# a support set's) -> COCO pseudo ground truth (category_id = 1 + cluster index) + stats.
CLUSTER = config["cluster"]
CLUSTER_DIR = RUN / "cluster"


rule cluster:
    input:
        shards=discover_shards(),
        support=CLUSTER["support_shards"] + support_shards(),
    output:
        pseudo_gt=CLUSTER_DIR / "pseudo_gt.json",
        stats=report(
            CLUSTER_DIR / "stats.json",
            caption="../report/cluster_stats.rst",
            category="Stage 2: cluster",
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
        k=CLUSTER["k"],
        overcluster=CLUSTER["overcluster"],
        kmeans=CLUSTER["kmeans"],
        seed=CLUSTER["seed"],
    shell:
        "maskdistill cluster --shards {input.shards:q} --support-shards {input.support:q}"
        " --k {params.k} --overcluster {params.overcluster} --kmeans {params.kmeans}"
        " --seed {params.seed} --threads {threads}"
        " --out {output.pseudo_gt:q} --stats {output.stats:q} 2> {log:q}"
