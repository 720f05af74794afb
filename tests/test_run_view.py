"""A run's view of the content-addressed cache (links and manifest), and cleaning the cache."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from maskdistill import cli
from maskdistill.run_view import MANIFEST, unused_entries, used_folders, write_run_view


def _entry(results: Path, stage: str, key: str, size: int) -> Path:
    """A cache folder holding one file of ``size`` bytes."""
    folder = results / "cache" / stage / key
    folder.mkdir(parents=True)
    (folder / "data.bin").write_bytes(b"x" * size)
    return folder


def test_a_run_folder_links_each_stage_and_names_it_in_its_manifest(tmp_path):
    distill = _entry(tmp_path, "distill", "a" * 12, 10)
    select = _entry(tmp_path, "select", "b" * 12, 5)
    kept = write_run_view(tmp_path / "demo", {"distill": distill, "select": select})
    assert kept == []
    link = tmp_path / "demo" / "distill"
    assert link.is_symlink() and os.readlink(link) == "../cache/distill/" + "a" * 12
    assert (link / "data.bin").read_bytes() == b"x" * 10
    manifest = json.loads((tmp_path / "demo" / MANIFEST).read_text())
    relative = {"distill": "../cache/distill/" + "a" * 12, "select": "../cache/select/" + "b" * 12}
    assert manifest == {"stages": relative}
    # a rerun with another key moves the link
    other = _entry(tmp_path, "distill", "c" * 12, 1)
    write_run_view(tmp_path / "demo", {"distill": other, "select": select})
    assert (tmp_path / "demo" / "distill").resolve() == other.resolve()


def test_a_real_folder_of_an_older_layout_is_kept(tmp_path):
    old = tmp_path / "demo" / "distill"
    old.mkdir(parents=True)
    (old / "model.pth").write_bytes(b"old")
    distill = _entry(tmp_path, "distill", "a" * 12, 1)
    assert write_run_view(tmp_path / "demo", {"distill": distill}) == ["distill"]
    assert (old / "model.pth").read_bytes() == b"old" and not old.is_symlink()
    assert used_folders(tmp_path) == {distill.resolve()}


@pytest.mark.parametrize("name", ["../x", "a/b", "", MANIFEST])
def test_a_stage_name_must_be_a_plain_file_name(tmp_path, name):
    with pytest.raises(ValueError, match="plain file name"):
        write_run_view(tmp_path / "demo", {name: tmp_path})


def test_clean_lists_and_removes_only_what_no_run_uses(tmp_path, capsys):
    shared = _entry(tmp_path, "cluster", "a" * 12, 100)
    only_b = _entry(tmp_path, "distill", "b" * 12, 2048)
    orphan = _entry(tmp_path, "distill", "c" * 12, 3 * 2**20)
    stale = _entry(tmp_path, "select", "d" * 12, 7)
    write_run_view(tmp_path / "run-a", {"cluster": shared})
    write_run_view(tmp_path / "run-b", {"cluster": shared, "distill": only_b})
    entries = unused_entries(tmp_path)
    assert [(e.path, e.size) for e in entries] == [(orphan, 3 * 2**20), (stale, 7)]
    cli.main(["cache", "clean", "--results", str(tmp_path)])  # lists, removes nothing
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in listed] == [str(orphan), str(stale)]
    assert listed[0].split()[0] == "3.0"  # MiB
    assert orphan.is_dir() and stale.is_dir()
    cli.main(["cache", "clean", "--results", str(tmp_path), "--remove"])
    assert not orphan.exists() and not stale.exists()
    assert shared.is_dir() and only_b.is_dir()
    assert unused_entries(tmp_path) == []


def test_clean_from_another_directory_keeps_what_runs_use(tmp_path, monkeypatch):
    """The manifests' paths do not depend on where the workflow or clean run from."""
    used = _entry(tmp_path / "results", "distill", "a" * 12, 1)
    orphan = _entry(tmp_path / "results", "distill", "b" * 12, 1)
    monkeypatch.chdir(tmp_path)
    write_run_view("results/demo", {"distill": "results/cache/distill/" + "a" * 12})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert [e.path for e in unused_entries(tmp_path / "results")] == [orphan]
    assert used.is_dir()


def test_a_broken_manifest_stops_clean_naming_the_file(tmp_path):
    _entry(tmp_path, "distill", "a" * 12, 1)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / MANIFEST).write_text("{not json")
    with pytest.raises(SystemExit):
        cli.main(["cache", "clean", "--results", str(tmp_path), "--remove"])
    with pytest.raises(ValueError, match=f"run/{MANIFEST}: not a run manifest"):
        unused_entries(tmp_path)
    assert (tmp_path / "cache" / "distill" / ("a" * 12)).is_dir()


def test_the_view_command_links_name_folder_pairs(tmp_path, caplog):
    distill = _entry(tmp_path, "distill", "a" * 12, 1)
    with caplog.at_level("INFO"):
        cli.main(["cache", "view", "--run-dir", str(tmp_path / "demo"),
                  "--stage", f"distill={distill}"])  # fmt: skip
    assert (tmp_path / "demo" / "distill").resolve() == distill.resolve()
    # every command's last log line: its peak memory, for sizing a job's mem_mb
    import resource

    peak = re.fullmatch(r"done; peak memory (\d+) MB", caplog.records[-1].getMessage())
    usage = [resource.getrusage(who).ru_maxrss / 1024
             for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]  # fmt: skip
    assert peak and round(max(usage)) - 1 <= int(peak.group(1)) <= round(max(usage)) + 1
    with pytest.raises(SystemExit):
        cli.main(["cache", "view", "--run-dir", str(tmp_path / "demo"), "--stage", "distill"])


def test_clean_keeps_what_the_runs_of_a_sweep_use(tmp_path):
    """A sweep's runs live one level deeper (<run_name>/<setting>=<value>/)."""
    used = _entry(tmp_path, "select", "a" * 12, 1)
    orphan = _entry(tmp_path, "select", "b" * 12, 1)
    write_run_view(tmp_path / "sweep-tau" / "select.tau=0.5", {"select": used})
    manifest = json.loads((tmp_path / "sweep-tau" / "select.tau=0.5" / MANIFEST).read_text())
    assert manifest == {"stages": {"select": "../../cache/select/" + "a" * 12}}
    assert [e.path for e in unused_entries(tmp_path)] == [orphan]


def test_skip_notes_name_each_list_that_holds_images(tmp_path):
    from maskdistill.images import write_skipped
    from maskdistill.run_view import skipped_image_notes

    shard = tmp_path / "cache" / "discover" / ("a" * 12) / "shard-0-of-1.h5"
    shard.parent.mkdir(parents=True)
    write_skipped(Path(f"{shard}.skipped.tsv"), [("a.jpg", "truncated"), ("b.jpg", "empty")])
    run = tmp_path / "demo"
    (run / "distill").mkdir(parents=True)
    write_skipped(run / "distill" / "shard-0-of-1.json.skipped.tsv", [])  # nothing skipped
    assert skipped_image_notes([shard, tmp_path / "absent.h5"], run) == [
        f"2 unreadable images skipped, listed in {shard}.skipped.tsv"
    ]
