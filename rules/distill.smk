# Stage 3, distill: Mask R-CNN (torchvision's, or detectron2's with distill.backend: detectron2)
# trained on the stage-2 pseudo ground truth (the clusters are its classes), then up to
# detections_per_image scored masks for every learning image, one COCO results list per shard
# (the shard assignment of discover), which stage 4, the metrics and the pictures read shard by
# shard; one merged list only on request (`snakemake merged_predictions`). Only the final
# network is a declared output of training; its rolling checkpoint lives in resume/, which
# Snakemake never deletes, so a killed job resumes where it stopped when it is rerun.
DISTILL = config["distill"]
# settings that never change the network: not rule params
DISTILL_EXECUTION = ("checkpoint_every", "device", "precision")
# content addressed by the pseudo ground truth's key and every setting that changes the network
# or its predictions (precision does: it is in the key, not in the training flags)
DISTILL_KEY = content_key(
    "distill", CLUSTER_KEY, without(DISTILL, "checkpoint_every", "device")
)
DISTILL_DIR = CACHE / "distill" / DISTILL_KEY
DISTILL_MODEL = DISTILL_DIR / "model.pth"
DISTILL_TRAIN_METRICS = DISTILL_DIR / "train_metrics.jsonl"
DISTILL_SHARDS = shard_paths(
    DISTILL_DIR / "predictions", DISCOVER["num_shards"], ".json"
)
# every shard's predictions in one list: written only when asked for (rule merged_predictions)
DISTILL_PREDICTIONS = DISTILL_DIR / "predictions.json"


rule distill_train:
    input:
        dataset=dataset_ready(),
        pseudo_gt=PSEUDO_GT,
        weights=weight_files([DISTILL["init"]]),
    output:
        model=DISTILL_MODEL,
        metrics=DISTILL_TRAIN_METRICS,
    log:
        LOGS / "distill_train.log",
    benchmark:
        BENCHMARKS / "distill_train.tsv"
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["distill_train"]["threads"]
    resources:
        mem_mb=RESOURCES["distill_train"]["mem_mb"],
        runtime=RESOURCES["distill_train"]["runtime"],
        gpu=RESOURCES["distill_train"]["gpu"],
        # execution settings: resources, so that changing them reruns nothing
        workers=RESOURCES["distill_train"]["workers"],
        checkpoint_every=DISTILL["checkpoint_every"],
        keep=KEEP_CHECKPOINTS,
        device=DISTILL["device"],
    params:
        code=code_fingerprint("maskdistill.commands.distill_train"),
        gpu_locks=GPU_LOCKS,
        dataset=dataset_args(),
        flags=cli_flags(without(DISTILL, *DISTILL_EXECUTION)),
        resume=DISTILL_DIR / "resume",
        # several GPUs: torchrun for the torchvision backend, detectron2's own launcher for it
        launch="--distributed" if DISTILL["backend"] == "torchvision" else "",
    shell:
        "maskdistill gpu-run --gpus {resources.gpu} --lock-dir {params.gpu_locks:q}"
        " {params.launch} -- maskdistill distill train --pseudo-gt {input.pseudo_gt:q}"
        " {params.dataset} {params.flags} --resume-dir {params.resume:q}"
        " --checkpoint-every {resources.checkpoint_every} {resources.keep} --device {resources.device}"
        " --workers {resources.workers} --threads {threads}"
        " --out {output.model:q} --metrics {output.metrics:q} 2> {log:q}"


rule distill_predict:
    input:
        dataset=dataset_ready(),
        model=DISTILL_MODEL,
        pseudo_gt=lambda w: job_shard(PSEUDO_GT, w),
        images=lambda w: shard_images(DATASET, w.shard, w.num_shards),
    output:
        DISTILL_DIR / "predictions" / "shard-{shard}-of-{num_shards}.json",
    log:
        LOGS / "distill_predict" / "shard-{shard}-of-{num_shards}.log",
    benchmark:
        BENCHMARKS / "distill_predict" / "shard-{shard}-of-{num_shards}.tsv"
    wildcard_constraints:
        shard=r"\d+",
        num_shards=r"\d+",
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["distill_predict"]["threads"]
    resources:
        mem_mb=RESOURCES["distill_predict"]["mem_mb"],
        runtime=RESOURCES["distill_predict"]["runtime"],
        gpu=RESOURCES["distill_predict"]["gpu"],
        batch_size=RESOURCES["distill_predict"]["batch_size"],
        workers=RESOURCES["distill_predict"]["workers"],
        device=DISTILL["device"],
        # unreadable images: a finished output is the same either way (skips are listed)
        on_bad_image=config["on_bad_image"],
    params:
        code=code_fingerprint("maskdistill.commands.distill"),
        gpu_locks=GPU_LOCKS,
        dataset=dataset_args(),
        precision=DISTILL["precision"],
    shell:
        "maskdistill gpu-run --gpus {resources.gpu} --lock-dir {params.gpu_locks:q} --"
        " maskdistill distill predict --model {input.model:q} --pseudo-gt {input.pseudo_gt:q}"
        " {params.dataset} --shard {wildcards.shard} --num-shards {wildcards.num_shards}"
        " --batch-size {resources.batch_size} --workers {resources.workers}"
        " --device {resources.device} --threads {threads} --precision {params.precision}"
        " --on-bad-image {resources.on_bad_image} --out {output:q} 2> {log:q}"


rule distill_merge:
    input:
        DISTILL_SHARDS,
    output:
        DISTILL_PREDICTIONS,
    log:
        LOGS / "distill_merge.log",
    benchmark:
        BENCHMARKS / "distill_merge.tsv"
    localrule: True
    conda:
        "../envs/maskdistill.yaml"
    threads: 1
    resources:
        mem_mb=RESOURCES["evaluate"]["mem_mb"],
        runtime=RESOURCES["evaluate"]["runtime"],
    params:
        code=code_fingerprint("maskdistill.commands.distill"),
    shell:
        "maskdistill distill merge --shards {input:q} --out {output:q} 2> {log:q}"


# `snakemake merged_predictions`: the merged list, for a user's own tools (no stage reads it)
rule merged_predictions:
    input:
        DISTILL_PREDICTIONS,
    localrule: True
