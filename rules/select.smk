# Stage 4, select: the confident Mask R-CNN predictions of every learning image painted into one
# palette PNG label map per image (the training labels of stage 5), and what was kept.
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
SELECT_LABELS = SELECT_DIR / "labels"  # <file name stem>.png per image


rule select:
    input:
        predictions=PSEUDO_GT if FROM_PSEUDO_GT else DISTILL_PREDICTIONS,
        pseudo_gt=PSEUDO_GT,
    output:
        labels=directory(SELECT_LABELS),
        stats=report(
            SELECT_DIR / "stats.json",
            caption="../report/select_stats.rst",
            category="select",
        ),
    log:
        LOGS / "select.log",
    benchmark:
        BENCHMARKS / "select.tsv"
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
        " {params.flags} --out {output.labels:q} --stats {output.stats:q} 2> {log:q}"
