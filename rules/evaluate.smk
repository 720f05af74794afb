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
NAMING = EVALUATE_DIR / "cluster.json" if EVALUATE["matching"] == "objects" else None
# the metrics table and the ablation table (and with them every metrics JSON), when there is
# ground truth
EVALUATE_OUTPUTS = (
    [EVALUATE_DIR / "metrics.md", EVALUATE_DIR / "ablation.md"]
    if evaluation_enabled()
    else []
)


# one job per metrics JSON: evaluation_inputs and evaluation_command (rules/common.smk) say what
# each report reads and which `maskdistill evaluate` subcommand writes it
rule evaluate:
    input:
        unpack(evaluation_inputs),
    output:
        report(
            EVALUATE_DIR / "{report}.json",
            caption="../report/evaluate_json.rst",
            category="Metrics",
        ),
    log:
        LOGS / "evaluate" / "{report}.log",
    benchmark:
        BENCHMARKS / "evaluate" / "{report}.tsv"
    wildcard_constraints:
        report=r"discovery|cluster|distill|select|segment-(round-\d+|probe)-(labels|crf)",
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["evaluate"]["threads"]
    resources:
        mem_mb=RESOURCES["evaluate"]["mem_mb"],
        runtime=RESOURCES["evaluate"]["runtime"],
    params:
        code=code_fingerprint("maskdistill.commands.evaluate"),
        command=evaluation_command,
    shell:
        "maskdistill evaluate {params.command} --out {output:q} 2> {log:q}"


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
    localrule: True
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
    localrule: True
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
