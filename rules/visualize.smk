# Pictures of the run, for `snakemake --report`: a contact sheet per stage for a fixed sample
# of images (visualize.count, visualize.seed: the same images in every stage and every run),
# and plots of the run's numbers. Sheets show the evaluation split when there is ground truth,
# else the learning images. data/README.md, "Pictures".
VISUALIZE = config["visualize"]
PICTURES_DIR = RUN / "pictures"
SHEETS = ["discover", "cluster", "distill", "select", "segment", "overview"]
SHEET_SPLITS = (
    [DATASET["eval_split"]] if evaluation_enabled() else DATASET["learn_splits"]
)
FINAL_SPLIT = "eval" if evaluation_enabled() else "learn"
# plot -> its report category (the stage it shows, or Metrics)
PLOTS = {"cluster_sizes": "cluster", "scores": "distill", "training": "training"} | (
    {"miou": "Metrics", "per_class": "Metrics", "confusion": "cluster"}
    if evaluation_enabled()
    else {}
)
# the training metrics logs of the training-curves plot (name -> log), and the outputs that
# guarantee them (pretrain's log lies in its resume/ folder, not an output)
TRAINING_LOGS = {"distill": DISTILL_TRAIN_METRICS} | {
    f"segment {net}": SEGMENT_DIR / net_folder(net) / "train_metrics.jsonl"
    for net in [f"round-{r}" for r in range(ROUNDS + 1)]
    + (["probe"] if PROBE["enabled"] else [])
}
TRAINED = list(TRAINING_LOGS.values())
if PRETRAIN["enabled"]:
    TRAINING_LOGS = {
        "pretrain": PRETRAIN_DIR / "resume" / "metrics.jsonl"
    } | TRAINING_LOGS
    TRAINED.append(PRETRAINED_BACKBONE)
PICTURES = [PICTURES_DIR / f"sheet-{stage}.png" for stage in SHEETS] + [
    PICTURES_DIR / f"{plot}.png" for plot in PLOTS
]


rule visualize_sheet:
    input:
        unpack(sheet_inputs),
    output:
        report(
            PICTURES_DIR / "sheet-{stage}.png",
            caption="../report/sheet.rst",
            category="{stage}",
            subcategory="pictures",
        ),
    log:
        LOGS / "visualize_sheet_{stage}.log",
    benchmark:
        BENCHMARKS / "visualize_sheet_{stage}.tsv"
    wildcard_constraints:
        stage="|".join(SHEETS),
    localrule: True
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["visualize"]["threads"]
    resources:
        mem_mb=RESOURCES["visualize"]["mem_mb"],
        runtime=RESOURCES["visualize"]["runtime"],
        gpu=RESOURCES["visualize"]["gpu"],
    params:
        code=code_fingerprint("maskdistill.commands.visualize"),
        dataset=dataset_args(SHEET_SPLITS),
        inputs=sheet_flags,
        sample=cli_flags(VISUALIZE),
    shell:
        "maskdistill visualize sheet --stage {wildcards.stage} {params.dataset}"
        " {params.inputs} {params.sample} --out {output:q} 2> {log:q}"


rule visualize_plots:
    input:
        pseudo_gt=PSEUDO_GT,
        predictions=DISTILL_SHARDS,
        trained=TRAINED,
        reports=METRICS_REPORTS if evaluation_enabled() else [],
    output:
        [
            report(
                PICTURES_DIR / f"{plot}.png",
                caption=f"../report/plot_{plot}.rst",
                category=category,
                subcategory="plots",
            )
            for plot, category in PLOTS.items()
        ],
    log:
        LOGS / "visualize_plots.log",
    benchmark:
        BENCHMARKS / "visualize_plots.tsv"
    localrule: True
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["visualize"]["threads"]
    resources:
        mem_mb=RESOURCES["visualize"]["mem_mb"],
        runtime=RESOURCES["visualize"]["runtime"],
        gpu=RESOURCES["visualize"]["gpu"],
    params:
        code=code_fingerprint("maskdistill.commands.visualize"),
        logs=[f"{name}={path}" for name, path in TRAINING_LOGS.items()],
        evaluated=(
            cli_flags(
                {
                    "reports": METRICS_REPORTS,
                    "paper": EVALUATE["paper"],
                    "cluster_metrics": EVALUATE_DIR / "cluster.json",
                }
            )
            if evaluation_enabled()
            else ""
        ),
        tau=config["select"]["tau"],
        out_dir=PICTURES_DIR,
    shell:
        "maskdistill visualize plots --pseudo-gt {input.pseudo_gt:q}"
        " --predictions {input.predictions:q} --tau {params.tau}"
        " --logs {params.logs:q} {params.evaluated}"
        " --out-dir {params.out_dir:q} 2> {log:q}"
