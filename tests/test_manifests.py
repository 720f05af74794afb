"""Per-shard manifests of a folder dataset (maskdistill/manifests.py)."""

from __future__ import annotations

import os

from maskdistill.data.folder import list_images
from maskdistill.manifests import HEADER, write_manifests
from maskdistill.sharding import shard_of


def _folder(tmp_path, names):
    root = tmp_path / "images"
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * len(name))
        os.utime(root / name, ns=(10**18, 10**18 + len(name)))
    return root


def test_each_image_is_a_row_of_its_shards_manifest(tmp_path):
    names = ["a.jpg", "b.jpg", "c/d.png", "e f.jpg", "g{1}.jpg"]
    root = _folder(tmp_path, names)
    paths = write_manifests(root, list_images(root), 3, tmp_path / "m")
    assert [p.name for p in paths] == [f"shard-{i}-of-3.tsv" for i in range(3)]
    for shard, path in enumerate(paths):
        lines = path.read_text().splitlines(keepends=True)
        assert lines[0] == HEADER
        expected = sorted(
            f"{n}\t{len(n)}\t{10**18 + len(n)}\n" for n in names if shard_of(n, 3) == shard
        )
        assert lines[1:] == expected


def test_a_manifest_is_rewritten_only_when_its_images_change(tmp_path):
    names = [f"img-{i}.jpg" for i in range(12)]
    root = _folder(tmp_path, names)
    paths = write_manifests(root, list_images(root), 4, tmp_path / "m")
    for path in paths:
        os.utime(path, ns=(1, 1))  # old, so that a rewrite shows
    write_manifests(root, list_images(root), 4, tmp_path / "m")  # nothing changed
    assert {p.stat().st_mtime_ns for p in paths} == {1}
    new = next(f"new-{i}.jpg" for i in range(100) if shard_of(f"new-{i}.jpg", 4) == 2)
    _folder(tmp_path, [new])
    write_manifests(root, list_images(root), 4, tmp_path / "m")
    assert [p.stat().st_mtime_ns != 1 for p in paths] == [False, False, True, False]
    assert new in paths[2].read_text()
    os.utime(root / names[0], ns=(5, 5))  # an edited image: its shard only
    edited = shard_of(names[0], 4)
    for path in paths:
        os.utime(path, ns=(1, 1))
    write_manifests(root, list_images(root), 4, tmp_path / "m")
    assert [p.stat().st_mtime_ns != 1 for p in paths] == [i == edited for i in range(4)]


def test_a_broken_link_is_listed_without_size(tmp_path):
    root = _folder(tmp_path, ["a.jpg"])
    (root / "gone.jpg").symlink_to(root / "missing.jpg")
    (path,) = write_manifests(root, list_images(root), 1, tmp_path / "m")
    assert path.read_text() == HEADER + f"a.jpg\t5\t{10**18 + 5}\ngone.jpg\t-1\t0\n"
