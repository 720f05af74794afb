"""Checks of a validated config against the files it names, before any job starts.

The workflow runs them when it parses the config (rules/common.smk), so that a dry run already
fails with the setting's name: dataset roots and image lists that do not exist, weight files
that are not readable, ``discover.heads`` above the backbone's heads, ``cluster.k`` above the
number of images. They read only file headers and lists (no network, no PyTorch); what cannot
be known this way (a hub model's weights, a legacy pickle checkpoint) is checked by its job.
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

PICKLE_PROTOCOL = b"\x80"  # the first byte of a pickle of protocol 2 or later (legacy torch.save)
# attention heads of timm's ViT sizes (vit_<size>_patch...)
VIT_HEADS = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16}
WIDTH_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16}


def check_dataset(dataset: Mapping[str, Any], setting: str, generated: bool = False) -> None:
    """The dataset's root, image folder and lists exist (``setting``: e.g. ``dataset``)."""
    if generated:
        return  # the workflow writes it
    root = Path(dataset["root"])
    if not root.is_dir():
        raise ValueError(f"config key '{setting}.root': {root} is not a folder")
    splits = [*dataset.get("learn_splits", []), dataset.get("eval_split")]
    if dataset["kind"] == "voc":
        if not (root / "JPEGImages").is_dir():
            raise ValueError(f"config key '{setting}.root': {root} has no JPEGImages folder")
        sets = root / "ImageSets" / dataset["imagesets"]
        for split in filter(None, splits):
            _require(sets / f"{split}.txt", f"{setting}.learn_splits / eval_split", "is missing")
    elif dataset["kind"] == "coco":
        for key in ("annotations", "image_list"):
            if dataset.get(key) is not None:
                _require(Path(dataset[key]), f"{setting}.{key}", "does not exist")


def rejected_names(
    dataset: Mapping[str, Any], list_folder: Callable[[str], list[str]] | None = None
) -> list[tuple[str, str]]:
    """(name, where it comes from and why) of the image names of a dataset that are not plain
    relative paths (:mod:`maskdistill.names`), from the lists known at parse time: VOC split
    files and folder listings (a COCO JSON is checked by the jobs that read it)."""
    from maskdistill.names import unsafe_reason

    if dataset["kind"] == "voc":
        from maskdistill.data.voc import split_rejects

        sets = Path(dataset["root"]) / "ImageSets" / dataset["imagesets"]
        splits = dict.fromkeys(filter(None, [*dataset["learn_splits"], dataset.get("eval_split")]))
        files = [sets / f"{split}.txt" for split in splits]
        return [(e.name, str(e)) for f in files if f.is_file() for e in split_rejects(f)]
    if dataset["kind"] == "folder":
        listing = list_folder or _list_folder
        root = dataset["root"]
        return [
            (name, f"{root}: image name {ascii(name)} {reason}")
            for name in listing(root)
            if (reason := unsafe_reason(name)) is not None
        ]
    return []


def check_image_names(
    dataset: Mapping[str, Any],
    on_bad_image: str,
    list_folder: Callable[[str], list[str]] | None = None,
) -> list[tuple[str, str]]:
    """:func:`rejected_names`: under ``on_bad_image: error`` the first is a ValueError naming the
    file and line; under ``skip`` they are returned (the jobs list them as skipped)."""
    rejected = rejected_names(dataset, list_folder)
    if rejected and on_bad_image == "error":
        raise ValueError(
            f"{rejected[0][1]}; fix or remove the line (or set on_bad_image: skip to leave "
            f"such images out; {len(rejected)} found)"
        )
    return rejected


def check_cached_skips(shards: list[Path], on_bad_image: str) -> None:
    """Under ``on_bad_image: error``, a cached discover shard that left images out (made
    under ``skip``) is an error naming them and both ways out, before any job runs."""
    from maskdistill.images import read_skipped

    if on_bad_image != "error":
        return
    for shard in shards:
        listing = Path(f"{shard}.skipped.tsv")
        rows = read_skipped(listing) if shard.is_file() and listing.is_file() else []
        if rows:
            shown = "; ".join(f"{name} ({reason})" for name, reason in rows[:3])
            raise ValueError(
                f"config key 'on_bad_image' is error, but the cached shard {shard} was made "
                f"with skip and left out {len(rows)} images: {shown}"
                f"{' ...' if len(rows) > 3 else ''} (all in {listing}). Either set "
                f"on_bad_image: skip, or fix or remove those files and delete {shard} so that "
                "it is computed again"
            )


def _require(path: Path, setting: str, problem: str) -> None:
    if not path.is_file():
        raise ValueError(f"config key '{setting}': {path} {problem}")


def image_count(dataset: Mapping[str, Any], folder_images: list[str] | None = None) -> int | None:
    """The number of learning images when it can be known from lists alone, else None."""
    if dataset["kind"] == "folder":
        return None if folder_images is None else len(folder_images)
    if dataset["kind"] == "voc":
        sets = Path(dataset["root"]) / "ImageSets" / dataset["imagesets"]
        names: set[str] = set()
        for split in dataset["learn_splits"]:
            names.update(line.strip() for line in (sets / f"{split}.txt").read_text().split())
        return len(names - {""})
    if dataset.get("image_list") is not None:
        return len([n for n in Path(dataset["image_list"]).read_text().split() if n])
    return None


def check_batch_size(setting: str, batch_size: int, images: int | None, what: str) -> None:
    """A training batch (over all GPUs) needs at least that many training images."""
    if images is not None and batch_size > images:
        raise ValueError(
            f"config key '{setting}': a batch of {batch_size} images, but {what} has only "
            f"{images} (lower {setting})"
        )


def check_lr_epochs(section: str, values: Mapping[str, Any]) -> None:
    """Every epoch of ``lr_epochs`` must lie before the last epoch: the rate decays once the
    0-based epoch exceeds it (the reference's rule), so a later one never decays."""
    late = [m for m in values["lr_epochs"] if m > values["epochs"] - 2]
    if late:
        raise ValueError(
            f"config key '{section}.lr_epochs': {late} would never decay the rate with "
            f"{section}.epochs {values['epochs']} (the rate decays once the 0-based epoch "
            f"exceeds the value: at most {values['epochs'] - 2})"
        )


def check_cluster_count(k: int, overcluster: int, images: int | None) -> None:
    """``cluster.k`` x ``cluster.overcluster`` clusters need at least as many images."""
    if images is not None and k * overcluster > images:
        raise ValueError(
            f"config key 'cluster.k': {k} x overcluster {overcluster} clusters but only {images} "
            "learning images (K-means needs at least one image per cluster)"
        )


def check_weights_file(path: str | Path, setting: str) -> None:
    """A weights file can be read: a safetensors header, or a torch zip archive whose every
    member passes its CRC check (legacy pickle files are left to the job)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config key '{setting}': {path} does not exist")
    if path.suffix == ".safetensors":
        _safetensors_header(path, setting)
    elif zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise ValueError(f"config key '{setting}': {path} is corrupt ({error})") from error
        if bad is not None:
            raise ValueError(f"config key '{setting}': {path} is corrupt (member {bad})")
    elif path.stat().st_size == 0:
        raise ValueError(f"config key '{setting}': {path} is empty (0 bytes)")
    elif path.suffix != ".pkl" and path.read_bytes()[:1] != PICKLE_PROTOCOL:
        raise ValueError(
            f"config key '{setting}': {path} is not a weights file (neither a PyTorch zip "
            "archive, a safetensors file nor a legacy PyTorch pickle)"
        )


def _safetensors_header(path: Path, setting: str) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            return json.loads(f.read(length))
    except (struct.error, ValueError, OSError) as error:
        raise ValueError(f"config key '{setting}': {path} is not a safetensors file") from error


def backbone_heads(spec: str, num_heads: int | None) -> int | None:
    """The attention heads of a backbone when ``num_heads``, a timm name, a ``random:`` spec or a
    safetensors file's shapes tell (from the width, as the loader infers them), else None
    (a ``.pth`` checkpoint: its job checks)."""
    if num_heads is not None:
        return num_heads
    if spec.startswith("random:"):
        fields = dict(item.partition("=")[::2] for item in spec[7:].split(",") if item)
        if "heads" in fields:
            return int(fields["heads"])
        return WIDTH_HEADS.get(int(fields.get("width", 192)))
    path = Path(spec)
    if path.suffix == ".safetensors" and path.is_file():
        header = _safetensors_header(path, "discover.backbone")
        width = header.get("cls_token", {}).get("shape", [0])[-1]
        return WIDTH_HEADS.get(width)
    if path.is_file():  # a PyTorch file: its width, read without unpickling objects
        return WIDTH_HEADS.get(_checkpoint_width(path))
    match = re.match(r"vit_(tiny|small|base|large|huge)_", path.name)
    return VIT_HEADS[match.group(1)] if match and not path.is_file() else None


def _checkpoint_width(path: Path) -> int | None:
    """The embedding width of a ViT checkpoint (its ``cls_token``), or None when it has none."""
    import torch

    from maskdistill.models.vit import checkpoint_filter_fn

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        raise ValueError(
            f"config key 'discover.backbone': {path} is not a readable checkpoint ({error})"
        ) from error
    token = checkpoint_filter_fn(payload).get("cls_token") if isinstance(payload, dict) else None
    return None if token is None else int(token.shape[-1])


def check_heads(heads: int, spec: str, num_heads: int | None) -> None:
    """``discover.heads`` (the heads averaged) is at most the backbone's heads."""
    available = backbone_heads(spec, num_heads)
    if available is not None and heads > available:
        raise ValueError(
            f"config key 'discover.heads': {heads} heads averaged, but the backbone {spec!r} "
            f"has {available}"
        )


def check_pickle(init: str, trust_pickle: bool) -> None:
    """A ``.pkl`` init is unpickled by detectron2 (it can run code): only with ``trust_pickle``."""
    if Path(init).suffix == ".pkl" and not trust_pickle:
        raise ValueError(
            f"config key 'distill.init': {init} is a pickle, which detectron2 unpickles (a pickle "
            "from a stranger can run code); convert it to .pth (docs/security.md) or, for a file "
            "you trust, set distill.trust_pickle: true"
        )


def check_distill_backend(distill: Mapping[str, Any], installed: bool) -> None:
    """``distill.backend: detectron2`` needs detectron2, an architecture it builds, and no
    pickle among its weights unless the user trusts it."""
    if distill["backend"] != "detectron2":
        return
    check_pickle(distill["init"], distill["trust_pickle"])
    if not installed:
        raise ValueError(
            "config key 'distill.backend': detectron2 is not installed (it is optional; "
            "pip install 'git+https://github.com/facebookresearch/detectron2.git', or conda-forge)"
        )
    if distill["arch"] != "resnet50":
        raise ValueError(
            f"config key 'distill.arch': {distill['arch']!r} is a torchvision-backend "
            "architecture; the detectron2 backend builds distill.detectron2_config (set "
            "distill.arch: resnet50)"
        )


def check_config(
    config: Mapping[str, Any], list_folder: Callable[[str], list[str]] | None = None
) -> None:
    """Every check above on a validated config.

    Args:
        config: the validated config, defaults filled in.
        list_folder: root -> the image files of a folder dataset (default
            :func:`maskdistill.data.folder.list_images`; the workflow passes its cached one).

    Raises:
        ValueError: naming the config key and the problem.
    """
    from maskdistill.models.specs import looks_like_path

    demo = config["demo_data"]
    dataset = config["dataset"]
    check_dataset(dataset, "dataset", generated=demo["generate"])
    support = config["cluster"]["support_dataset"]
    if support is not None:
        check_dataset(support, "cluster.support_dataset")
    installed = importlib.util.find_spec("detectron2") is not None
    check_distill_backend(config["distill"], installed)
    discover, pretrain = config["discover"], config["pretrain"]
    named = {
        "discover.backbone": None if pretrain["enabled"] else discover["backbone"],
        "discover.feature_backbone": discover["feature_backbone"],
        "distill.init": config["distill"]["init"],
        "segment.init": config["segment"]["init"],
    }
    for setting, spec in named.items():
        if spec is not None and looks_like_path(spec):
            check_weights_file(spec, setting)
    if pretrain["enabled"]:
        check_heads(discover["heads"], "the pretrained backbone", pretrain["num_heads"])
    else:
        check_heads(discover["heads"], discover["backbone"], discover["num_heads"])
    if support is None:
        if demo["generate"]:
            sizes = {"train": demo["num_train"], "val": demo["num_val"]}
            images = sum(sizes.get(split, 0) for split in dataset["learn_splits"])
        else:
            listing = list_folder or _list_folder
            listed = listing(dataset["root"]) if dataset["kind"] == "folder" else None
            images = image_count(dataset, listed)
        cluster = config["cluster"]
        check_cluster_count(cluster["k"], cluster["overcluster"], images)
        check_batch_size("distill.batch_size", config["distill"]["batch_size"], images,
                         "dataset.learn_splits")  # fmt: skip
    segment = config["segment"]
    splits = segment["train_splits"] or dataset["learn_splits"]
    check_batch_size(
        "segment.batch_size",
        segment["batch_size"],
        split_count(config, splits, list_folder),
        "the stage-5 training images",
    )
    if config["probe"]["enabled"]:
        check_batch_size("probe.batch_size", config["probe"]["batch_size"],
                         split_count(config, config["probe"]["splits"], list_folder),
                         "probe.splits")  # fmt: skip
    for section in ("segment", "probe"):
        check_lr_epochs(section, config[section])


def split_count(
    config: Mapping[str, Any], splits: list[str], list_folder: Callable | None = None
) -> int | None:
    """How many images the given splits of the config's dataset hold, when lists tell."""
    demo, dataset = config["demo_data"], config["dataset"]
    if demo["generate"]:
        sizes = {"train": demo["num_train"], "val": demo["num_val"]}
        return sum(sizes.get(split, 0) for split in splits)
    if dataset["kind"] == "voc" and not all(
        (Path(dataset["root"]) / "ImageSets" / dataset["imagesets"] / f"{s}.txt").is_file()
        for s in splits
    ):
        return None
    listing = list_folder or _list_folder
    listed = listing(dataset["root"]) if dataset["kind"] == "folder" else None
    return image_count(dataset | {"learn_splits": list(splits)}, listed)


def _list_folder(root: str) -> list[str]:
    from maskdistill.data.folder import list_images

    return list_images(Path(root))
