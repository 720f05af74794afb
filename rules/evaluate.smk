# Metrics against the ground truth of dataset.eval_split: stage-1 CorLoc, stage-2 mIoU, cluster
# accuracy, NMI, ARI, and one Markdown table. Only when the dataset has ground truth.
EVALUATE = config["evaluate"]
EVALUATE_DIR = RUN / "evaluate"


# the metrics JSONs the Markdown table shows, in stage order
METRICS_REPORTS = [EVALUATE_DIR / "discovery.json", EVALUATE_DIR / "cluster.json"]
# the metrics table (and with it every metrics JSON), when there is ground truth
EVALUATE_OUTPUTS = [EVALUATE_DIR / "metrics.md"] if evaluation_enabled() else []


rule evaluate_discovery:
    input:
        dataset=dataset_ready(),
        shards=DISCOVER_SHARDS,
    output:
        report(
            EVALUATE_DIR / "discovery.json",
            caption="../report/evaluate_json.rst",
            category="Metrics",
        ),
    log:
        LOGS / "evaluate_discovery.log",
    benchmark:
        BENCHMARKS / "evaluate_discovery.tsv"
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["evaluate"]["threads"]
    resources:
        mem_mb=RESOURCES["evaluate"]["mem_mb"],
        runtime=RESOURCES["evaluate"]["runtime"],
        gpu=RESOURCES["evaluate"]["gpu"],
    params:
        code=code_fingerprint("maskdistill.commands.evaluate"),
        dataset=dataset_args([DATASET["eval_split"]]),
    shell:
        "maskdistill evaluate discovery --shards {input.shards:q} {params.dataset}"
        " --out {output:q} 2> {log:q}"


rule evaluate_cluster:
    input:
        dataset=dataset_ready(),
        pseudo_gt=PSEUDO_GT,
    output:
        report(
            EVALUATE_DIR / "cluster.json",
            caption="../report/evaluate_json.rst",
            category="Metrics",
        ),
    log:
        LOGS / "evaluate_cluster.log",
    benchmark:
        BENCHMARKS / "evaluate_cluster.tsv"
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["evaluate"]["threads"]
    resources:
        mem_mb=RESOURCES["evaluate"]["mem_mb"],
        runtime=RESOURCES["evaluate"]["runtime"],
        gpu=RESOURCES["evaluate"]["gpu"],
    params:
        code=code_fingerprint("maskdistill.commands.evaluate"),
        dataset=dataset_args([DATASET["eval_split"]]),
        # objects: the clusters are named by the object-level matching over the learning images
        matching=cli_flags(
            {
                "matching": EVALUATE["matching"],
                "matching_splits": DATASET["learn_splits"],
            }
        ),
    shell:
        "maskdistill evaluate cluster --pseudo-gt {input.pseudo_gt:q} {params.dataset}"
        " {params.matching} --out {output:q} 2> {log:q}"


rule evaluate_table:
    input:
        reports=METRICS_REPORTS,
    output:
        report(
            EVALUATE_DIR / "metrics.md",
            caption="../report/metrics_table.rst",
            category="Metrics",
        ),
    log:
        LOGS / "evaluate_table.log",
    benchmark:
        BENCHMARKS / "evaluate_table.tsv"
    conda:
        "../envs/maskdistill.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=code_fingerprint("maskdistill.commands.evaluate"),
    shell:
        "maskdistill evaluate table --reports {input.reports:q} --out {output:q} 2> {log:q}"
