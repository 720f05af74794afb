"""Atomic outputs: nothing partial after an error, nothing left behind by a killed writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maskdistill.io import atomic_path, read_json, read_json_lines, write_json

WRITER = """
import sys, time
from maskdistill.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half")
    time.sleep(60)
"""


def test_an_error_inside_the_block_leaves_neither_output_nor_temporary(tmp_path):
    out = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_the_temporary_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    out = tmp_path / "result.json"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(out)])
    stale = tmp_path / f".result.json.tmp-{writer.pid}"
    deadline = time.time() + 30
    while not stale.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert stale.exists() and not out.exists()  # what kill -9 leaves behind
    (tmp_path / ".other.json.tmp-1").write_text("another output's")
    write_json(out, {"a": 1})
    assert read_json(out) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.tmp-1", "result.json"]


def test_a_killed_writer_of_a_folder_leaves_nothing_after_the_rerun(tmp_path: Path):
    out = tmp_path / "labels"
    stale = tmp_path / ".labels.tmp-4242"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "a.png").write_bytes(b"x")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "b.png").write_bytes(b"y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels"]
    assert [p.name for p in out.iterdir()] == ["b.png"]


def test_json_lines_name_the_bad_line(tmp_path):
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": 1}\n\n{"step": 2\n')
    with pytest.raises(ValueError, match=r"m.jsonl:3: not a JSON line"):
        read_json_lines(log)
    assert read_json_lines(tmp_path / "missing.jsonl") == []
