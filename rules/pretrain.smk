# Optional stage 0, pretrain: DINO self-distillation of the discover backbone on the dataset.
# Only the exported teacher backbone is a declared output; the rolling training checkpoint (and
# the metrics log) live next to it in resume/, which Snakemake never deletes, so a failed or
# killed job resumes where it stopped when it is rerun.
PRETRAIN = config["pretrain"]
# settings that never change the exported weights: not in the content key, not rule params
PRETRAIN_EXECUTION = ("enabled", "checkpoint_every", "device")
PRETRAIN_SETTINGS = without(PRETRAIN, *PRETRAIN_EXECUTION)
# content addressed by the images it learns from and its settings
PRETRAIN_DIR = (
    CACHE
    / "pretrain"
    / content_key("pretrain", learning_view(DATASET), PRETRAIN_SETTINGS)
)
PRETRAINED_BACKBONE = PRETRAIN_DIR / "backbone.pth"


rule pretrain:
    input:
        dataset=dataset_ready(),
    output:
        backbone=PRETRAINED_BACKBONE,
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
        # execution settings: resources, so that changing them reruns nothing
        checkpoint_every=PRETRAIN["checkpoint_every"],
        device=PRETRAIN["device"],
        # unreadable images: a finished output is the same either way (skips are listed)
        on_bad_image=config["on_bad_image"],
    params:
        code=code_fingerprint("maskdistill.commands.pretrain"),
        gpu_locks=GPU_LOCKS,
        dataset=dataset_args(),
        flags=cli_flags(PRETRAIN_SETTINGS),
        checkpoint=PRETRAIN_DIR / "resume" / "checkpoint.pth",
        metrics=PRETRAIN_DIR / "resume" / "metrics.jsonl",
    shell:
        "maskdistill gpu-run --gpus {resources.gpu} --lock-dir {params.gpu_locks:q} --"
        " maskdistill pretrain {params.dataset} {params.flags}"
        " --checkpoint-every {resources.checkpoint_every} --device {resources.device}"
        " --out {output.backbone:q} --checkpoint {params.checkpoint:q}"
        " --metrics {params.metrics:q} --threads {threads}"
        " --on-bad-image {resources.on_bad_image} 2> {log:q}"
