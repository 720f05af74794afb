# The run's view of the content-addressed cache: results/<run_name>/<stage> links to the cache
# folder of each stage the run uses, and the manifest stages.json names them (what
# `maskdistill cache clean` keeps). Written once every stage's output is there.
RUN_STAGES = (
    ({"pretrain": PRETRAIN_DIR} if PRETRAIN["enabled"] else {})
    | {"discover": DISCOVER_SHARDS[0].parent}
    | ({"discover-support": SUPPORT_SHARDS[0].parent} if SUPPORT_SHARDS else {})
    | {
        "cluster": CLUSTER_DIR,
        "distill": DISTILL_DIR,
        "select": SELECT_DIR,
        "segment": SEGMENT_DIR,
    }
)
RUN_MANIFEST = RUN / "stages.json"


rule run_view:
    input:
        DISCOVER_SHARDS + SUPPORT_SHARDS,
        CLUSTER_OUTPUTS,
        DISTILL_MODEL,
        DISTILL_SHARDS,
        SELECT_LABELS,
        SEGMENT_DIR / LAST_NET / "model.pth",
    output:
        RUN_MANIFEST,
    log:
        LOGS / "run_view.log",
    localrule: True
    conda:
        "../envs/maskdistill.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        run=RUN,
        stages=cli_flags(
            {"stage": [f"{name}={folder}" for name, folder in RUN_STAGES.items()]}
        ),
    shell:
        "maskdistill cache view --run-dir {params.run:q} {params.stages} 2> {log:q}"
