# Metrics against the ground truth: stage-1 CorLoc and mask AP50, stage-2 mIoU, cluster
# accuracy, NMI, ARI, stage-3 mask AP50 and painted mIoU, the stage-4 maps' mIoU on the images
# they label (pseudo-label quality), stage-5 mIoU (with CRF, every CRF round, the linear probe),
# and one Markdown table. On dataset.eval_split, and only when the dataset has ground truth.
EVALUATE = config["evaluate"]
EVALUATE_DIR = RUN / "evaluate"


# the networks of stage 5 that are scored, and how, and the metrics JSONs of the Markdown table
# in stage order
SCORED_NETS = [f"round-{r}" for r in range(ROUNDS + 1)] + (
    ["probe"] if PROBE["enabled"] else []
)
SCORED_MODES = ["labels"] + (["crf"] if USES_CRF else [])
METRICS_REPORTS = [
    EVALUATE_DIR / "discovery.json",
    EVALUATE_DIR / "cluster.json",
    EVALUATE_DIR / "distill.json",
    EVALUATE_DIR / "select.json",
] + [
    EVALUATE_DIR / f"segment-{net}-{mode}.json"
    for net in SCORED_NETS
    for mode in SCORED_MODES
]
# the objects protocol names every stage's labels as stage 2's metrics did (--naming)
NAMING = EVALUATE_DIR / "cluster.json"
NAMED = {"naming": [NAMING]} if EVALUATE["matching"] == "objects" else {}
NAMING_FLAGS = cli_flags({"naming": NAMING}) if NAMED else ""
# the metrics table and the ablation table (and with them every metrics JSON), when there is
# ground truth
EVALUATE_OUTPUTS = (
    [EVALUATE_DIR / "metrics.md", EVALUATE_DIR / "ablation.md"]
    if evaluation_enabled()
    else []
)


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


rule evaluate_distill:
    input:
        unpack(lambda w: NAMED),
        dataset=dataset_ready(),
        predictions=DISTILL_PREDICTIONS,
        pseudo_gt=PSEUDO_GT,
    output:
        report(
            EVALUATE_DIR / "distill.json",
            caption="../report/evaluate_json.rst",
            category="Metrics",
        ),
    log:
        LOGS / "evaluate_distill.log",
    benchmark:
        BENCHMARKS / "evaluate_distill.tsv"
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
        naming=NAMING_FLAGS,
    shell:
        "maskdistill evaluate distill --predictions {input.predictions:q}"
        " --pseudo-gt {input.pseudo_gt:q} {params.dataset} {params.naming}"
        " --out {output:q} 2> {log:q}"


rule evaluate_select:
    input:
        unpack(lambda w: NAMED),
        dataset=dataset_ready(),
        labels=SELECT_LABELS,
        stats=SELECT_DIR / "stats.json",
        pseudo_gt=PSEUDO_GT,
    output:
        report(
            EVALUATE_DIR / "select.json",
            caption="../report/evaluate_json.rst",
            category="Metrics",
        ),
    log:
        LOGS / "evaluate_select.log",
    benchmark:
        BENCHMARKS / "evaluate_select.tsv"
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["evaluate"]["threads"]
    resources:
        mem_mb=RESOURCES["evaluate"]["mem_mb"],
        runtime=RESOURCES["evaluate"]["runtime"],
    params:
        code=code_fingerprint("maskdistill.commands.evaluate"),
        # the maps label the learning images: scored there, as pseudo-label quality
        dataset=dataset_args(),
        naming=NAMING_FLAGS,
    shell:
        "maskdistill evaluate labels --labels {input.labels:q} --pseudo-gt {input.pseudo_gt:q}"
        " --title 'stage 4: select' --missing skip --select-stats {input.stats:q}"
        " {params.dataset} {params.naming} --out {output:q} 2> {log:q}"


rule evaluate_segment:
    input:
        unpack(lambda w: {} if w.net == "probe" else NAMED),
        dataset=dataset_ready(),
        labels=lambda w: prediction_dirs(w.net, w.mode, "eval"),
        pseudo_gt=PSEUDO_GT,
    output:
        report(
            EVALUATE_DIR / "segment-{net}-{mode}.json",
            caption="../report/evaluate_json.rst",
            category="Metrics",
        ),
    log:
        LOGS / "evaluate_segment" / "{net}-{mode}.log",
    benchmark:
        BENCHMARKS / "evaluate_segment" / "{net}-{mode}.tsv"
    wildcard_constraints:
        net=r"round-\d+|probe",
        mode="labels|crf",
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["evaluate"]["threads"]
    resources:
        mem_mb=RESOURCES["evaluate"]["mem_mb"],
        runtime=RESOURCES["evaluate"]["runtime"],
    params:
        code=code_fingerprint("maskdistill.commands.evaluate"),
        dataset=dataset_args([DATASET["eval_split"]]),
        title=lambda w: segment_title(w.net, w.mode),
        supervised=lambda w: "--supervised" if w.net == "probe" else "",
        naming=lambda w: "" if w.net == "probe" else NAMING_FLAGS,
    shell:
        "maskdistill evaluate labels --labels {input.labels:q} --pseudo-gt {input.pseudo_gt:q}"
        " --title {params.title:q} {params.supervised} {params.dataset} {params.naming}"
        " --out {output:q} 2> {log:q}"


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


rule evaluate_ablation:
    input:
        reports=METRICS_REPORTS,
    output:
        table=report(
            EVALUATE_DIR / "ablation.md",
            caption="../report/ablation.rst",
            category="Metrics",
        ),
        json=EVALUATE_DIR / "ablation.json",
    log:
        LOGS / "evaluate_ablation.log",
    benchmark:
        BENCHMARKS / "evaluate_ablation.tsv"
    conda:
        "../envs/maskdistill.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=code_fingerprint("maskdistill.commands.evaluate"),
        paper=cli_flags({"paper": EVALUATE["paper"]}),
    shell:
        "maskdistill evaluate ablation --reports {input.reports:q} {params.paper}"
        " --out {output.table:q} --json {output.json:q} 2> {log:q}"
