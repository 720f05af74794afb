# Stage 5, segment: DeepLab-v3 trained on label maps, its predictions (and their CRF
# refinement), CRF rounds and the linear probe. Networks live in SEGMENT_DIR/<net>/ with <net>
# round-0 (trained on the stage-4 maps), round-<r> (trained on the CRF-refined predictions of
# round r-1 on the training images) and probe-<key> (the linear probe of the last round).
# Predictions are folders of label PNGs, one per shard: <net>/<mode>/<splits>/shard-<i>-of-<S>/
# with mode labels (argmax) or crf, and <splits> the predicted splits' names (images_folder:
# dataset.eval_split, dataset.learn_splits, or segment.train_splits: the images a CRF round's
# network learns from).
# Rolling training checkpoints live in <net>/resume/, never deleted by Snakemake.
from maskdistill.segment.crf import INSTALL as CRF_INSTALL, crf_available

SEGMENT = config["segment"]
PROBE = config["probe"]
ROUNDS = SEGMENT["crf_rounds"]
LAST_NET = f"round-{ROUNDS}"
SEGMENT_NETWORK = ("arch", "init", "freeze_layers", "head_channels")
SEGMENT_AUGMENTATION = ("size", "scale_range", "rotation", "flip")
SEGMENT_SCHEDULE = ("epochs", "batch_size", "lr", "momentum", "weight_decay")
SEGMENT_SCHEDULE += ("lr_epochs", "gamma", "clip_grad", "amp", "seed")
SEGMENT_CRF = tuple(
    key for key in SEGMENT if key.startswith("crf_") and key != "crf_rounds"
)
PROBE_SCHEDULE = tuple(key for key in SEGMENT_SCHEDULE if key in PROBE)
USES_CRF = SEGMENT["crf"] or ROUNDS > 0
if USES_CRF and not crf_available():
    raise ValueError(
        "config keys 'segment.crf' / 'segment.crf_rounds' need the dense CRF, which is not "
        f"installed: {CRF_INSTALL}"
    )
# the images stage-5 networks are trained on (VOC: their own splits, e.g. trainaug), predicted
# by the CRF rounds
TRAIN_SPLITS = SEGMENT["train_splits"] or DATASET["learn_splits"]
# the images a network predicts: the evaluation split, the learning images, the training images
# (a CRF round's labels); each one's folder is named by its splits, so that runs sharing a
# network but not an evaluation split keep their predictions apart
SPLITS = {"learn": DATASET["learn_splits"], "train": TRAIN_SPLITS} | (
    {"eval": [DATASET["eval_split"]]} if DATASET["eval_split"] is not None else {}
)
SPLIT_FOLDERS = {images_folder(splits): splits for splits in SPLITS.values()}
SEGMENT_CRF_SETTINGS = {k: SEGMENT[k] for k in SEGMENT_CRF}
CRF_FLAGS = f"--crf {cli_flags(SEGMENT_CRF_SETTINGS)}"
SEGMENT_SHARDS = DISCOVER["num_shards"]
SEGMENT_TRAINING = {
    k: SEGMENT[k] for k in SEGMENT_NETWORK + SEGMENT_AUGMENTATION + SEGMENT_SCHEDULE
}
# content addressed: the stage-4 maps' key, the training settings and images, and what decides
# the predictions (precision; the CRF settings when a CRF runs). Every CRF round lives in it
# (round-<r>/), and the linear probe (probe-<key>/).
SEGMENT_DIR = (
    CACHE
    / "segment"
    / content_key(
        "segment",
        SELECT_DIR.name,
        SEGMENT_TRAINING,
        TRAIN_SPLITS,
        SEGMENT["precision"],
        SEGMENT_CRF_SETTINGS if USES_CRF else None,
    )
)
# the linear probe of the last round: its own folder in SEGMENT_DIR, keyed by its settings
PROBE_TRAINING = {k: SEGMENT[k] for k in SEGMENT_AUGMENTATION} | {
    k: PROBE[k] for k in PROBE_SCHEDULE
}
PROBE_KEY = content_key("probe", LAST_NET, PROBE_TRAINING, PROBE["splits"])
PROBE_FOLDER = f"probe-{PROBE_KEY}"


rule segment_train:
    input:
        dataset=dataset_ready(),
        labels=training_labels,
        pseudo_gt=PSEUDO_GT,
        weights=weight_files([SEGMENT["init"]]),
    output:
        model=SEGMENT_DIR / "round-{round}" / "model.pth",
        metrics=SEGMENT_DIR / "round-{round}" / "train_metrics.jsonl",
    log:
        LOGS / "segment_train" / "round-{round}.log",
    benchmark:
        BENCHMARKS / "segment_train" / "round-{round}.tsv"
    wildcard_constraints:
        round=r"\d+",
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["segment_train"]["threads"]
    resources:
        mem_mb=RESOURCES["segment_train"]["mem_mb"],
        runtime=RESOURCES["segment_train"]["runtime"],
        gpu=RESOURCES["segment_train"]["gpu"],
        # execution settings: resources, so that changing them reruns nothing
        workers=RESOURCES["segment_train"]["workers"],
        checkpoint_every=SEGMENT["checkpoint_every"],
        keep=KEEP_CHECKPOINTS,
        device=SEGMENT["device"],
    params:
        code=code_fingerprint("maskdistill.commands.segment_train"),
        gpu_locks=GPU_LOCKS,
        dataset=dataset_args(TRAIN_SPLITS),
        flags=cli_flags(SEGMENT_TRAINING),
        resume=lambda w: SEGMENT_DIR / f"round-{w.round}" / "resume",
    shell:
        "maskdistill gpu-run --gpus {resources.gpu} --lock-dir {params.gpu_locks:q}"
        " --distributed -- maskdistill segment train --labels {input.labels:q}"
        " --pseudo-gt {input.pseudo_gt:q} {params.dataset} {params.flags}"
        " --resume-dir {params.resume:q} --checkpoint-every {resources.checkpoint_every} {resources.keep}"
        " --device {resources.device} --workers {resources.workers} --threads {threads}"
        " --out {output.model:q} --metrics {output.metrics:q} 2> {log:q}"


rule segment_probe:
    input:
        dataset=dataset_ready(),
        model=SEGMENT_DIR / LAST_NET / "model.pth",
        weights=weight_files([SEGMENT["init"]]),
    output:
        model=SEGMENT_DIR / PROBE_FOLDER / "model.pth",
        metrics=SEGMENT_DIR / PROBE_FOLDER / "train_metrics.jsonl",
    log:
        LOGS / "segment_probe.log",
    benchmark:
        BENCHMARKS / "segment_probe.tsv"
    conda:
        "../envs/maskdistill.yaml"
    threads: RESOURCES["segment_train"]["threads"]
    resources:
        mem_mb=RESOURCES["segment_train"]["mem_mb"],
        runtime=RESOURCES["segment_train"]["runtime"],
        gpu=RESOURCES["segment_train"]["gpu"],
        workers=RESOURCES["segment_train"]["workers"],
        checkpoint_every=SEGMENT["checkpoint_every"],
        keep=KEEP_CHECKPOINTS,
        device=SEGMENT["device"],
    params:
        code=code_fingerprint("maskdistill.commands.segment_train"),
        gpu_locks=GPU_LOCKS,
        dataset=dataset_args(PROBE["splits"]),
        flags=cli_flags(PROBE_TRAINING),
        resume=SEGMENT_DIR / PROBE_FOLDER / "resume",
    shell:
        "maskdistill gpu-run --gpus {resources.gpu} --lock-dir {params.gpu_locks:q}"
        " --distributed -- maskdistill segment probe --model {input.model:q}"
        " {params.dataset} {params.flags} --resume-dir {params.resume:q}"
        " --checkpoint-every {resources.checkpoint_every} {resources.keep} --device {resources.device}"
        " --workers {resources.workers} --threads {threads}"
        " --out {output.model:q} --metrics {output.metrics:q} 2> {log:q}"


rule segment_predict:
    input:
        dataset=dataset_ready(),
        model=SEGMENT_DIR / "{net}" / "model.pth",
        weights=weight_files([SEGMENT["init"]]),
        images=lambda w: shard_images(DATASET, w.shard, w.num_shards),
    output:
        directory(
            SEGMENT_DIR
            / "{net}"
            / "{mode}"
            / "{split}"
            / "shard-{shard}-of-{num_shards}"
        ),
    log:
        LOGS
        / "segment_predict"
        / "{net}-{mode}-{split}-shard-{shard}-of-{num_shards}.log",
    benchmark:
        BENCHMARKS
        / "segment_predict"
        / "{net}-{mode}-{split}-{shard}-of-{num_shards}.tsv"
    wildcard_constraints:
        net=r"round-\d+|probe-[0-9a-f]{12}",
        mode="labels|crf",
        split="|".join(map(re.escape, SPLIT_FOLDERS)),
        shard=r"\d+",
        num_shards=r"\d+",
    conda:
        "../envs/maskdistill.yaml"
    threads: lambda w: prediction_resource(w, "threads")
    resources:
        mem_mb=lambda w: prediction_resource(w, "mem_mb"),
        runtime=lambda w: prediction_resource(w, "runtime"),
        gpu=lambda w: prediction_resource(w, "gpu"),
        batch_size=lambda w: prediction_resource(w, "batch_size"),
        workers=lambda w: prediction_resource(w, "workers"),
        device=SEGMENT["device"],
        # unreadable images: a finished output is the same either way (skips are listed)
        on_bad_image=config["on_bad_image"],
    params:
        code=code_fingerprint("maskdistill.commands.segment"),
        gpu_locks=GPU_LOCKS,
        dataset=lambda w: dataset_args(SPLIT_FOLDERS[w.split]),
        crf=lambda w: CRF_FLAGS if w.mode == "crf" else "",
        precision=SEGMENT["precision"],
    shell:
        "maskdistill gpu-run --gpus {resources.gpu} --lock-dir {params.gpu_locks:q} --"
        " maskdistill segment predict --model {input.model:q} {params.dataset}"
        " --shard {wildcards.shard} --num-shards {wildcards.num_shards} {params.crf}"
        " --batch-size {resources.batch_size} --workers {resources.workers}"
        " --device {resources.device} --threads {threads} --precision {params.precision}"
        " --on-bad-image {resources.on_bad_image} --out {output:q} 2> {log:q}"
