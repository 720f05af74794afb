# Stage 4, select: the confident Mask R-CNN predictions of every learning image painted into one
# palette PNG label map per image (the training labels of stage 5), and what was kept.
SELECT = config["select"]
SELECT_DIR = CACHE / "select" / content_key("select", DISTILL_KEY, SELECT)
SELECT_LABELS = SELECT_DIR / "labels"  # <file name stem>.png per image


rule select:
    input:
        predictions=DISTILL_PREDICTIONS,
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
        flags=cli_flags(SELECT),
    shell:
        "maskdistill select --predictions {input.predictions:q} --pseudo-gt {input.pseudo_gt:q}"
        " {params.flags} --out {output.labels:q} --stats {output.stats:q} 2> {log:q}"
