# Optional stage 0, pretrain: DINO self-distillation of the discover backbone on the dataset.
# Only the exported teacher backbone is a declared output; the rolling training checkpoint (and
# the metrics log) live next to it in resume/, which Snakemake never deletes, so a failed or
# killed job resumes where it stopped when it is rerun.
PRETRAIN = config["pretrain"]
PRETRAIN_RESUME = pretrained_backbone().parent / "resume"


rule pretrain:
    input:
        dataset=dataset_ready(),
    output:
        backbone=pretrained_backbone(),
    log:
        LOGS / "pretrain.log",
    benchmark:
        BENCHMARKS / "pretrain.tsv"
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["pretrain"]["threads"]
    resources:
        mem_mb=RESOURCES["pretrain"]["mem_mb"],
        runtime=RESOURCES["pretrain"]["runtime"],
        gpu=RESOURCES["pretrain"]["gpu"],
    params:
        code=code_fingerprint("maskdistill.commands.pretrain"),
        gpu_locks=GPU_LOCKS,
        dataset=_dataset_args(),
        settings=pretrain_args(),
        checkpoint=PRETRAIN_RESUME / "checkpoint.pth",
        metrics=PRETRAIN_RESUME / "metrics.jsonl",
        on_bad_image=config["on_bad_image"],
    shell:
        "maskdistill gpu-run --gpus {resources.gpu} --lock-dir {params.gpu_locks:q} --"
        " maskdistill pretrain {params.dataset} {params.settings}"
        " --out {output.backbone:q} --checkpoint {params.checkpoint:q}"
        " --metrics {params.metrics:q} --threads {threads}"
        " --on-bad-image {params.on_bad_image} 2> {log:q}"
