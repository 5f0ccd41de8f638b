"""Issue 14, item 3 (command line): a read-only or full disk under `train`, `index` and `synth`, and a symbolic-link
loop as a path, give one sentence naming the path and exit status 2, never a traceback.

Two kinds of fixture:
  * real disks: a tmpfs mounted read-only, or tiny (a few kB, or filled up), inside a private mount namespace
    (`unshare -rm`, no privileges needed where user namespaces are enabled; the tests are skipped, with the
    reason, where they are not). Permission bits would not do: the tests run as root, which ignores them;
  * a monkeypatched write raising OSError(ENOSPC) with no file name (what a failed write() raises), which runs
    everywhere and checks that the command's --out is named then.
"""
from __future__ import annotations

import errno
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bmteach import cli
from bmteach.storage import REPO_ROOT
from bmteach.synth import generate_dataset

TRAIN = ["--epochs", "1", "--num-folds", "2", "--image-size", "32", "--device", "cpu", "--per-class", "2"]


def _namespaces_work() -> str | None:
    """None when `unshare -rm` can mount a tmpfs here, else why not."""
    try:
        done = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare is not usable here ({exc})"
    return None if done.returncode == 0 else f"no private tmpfs mount here ({done.stderr.strip()})"


WHY_NOT = _namespaces_work()
needs_mount = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("disk") / "data", per_class=2, seed=0, workers=1,
                            classes=["BLA", "LYT"])


def on_disk(mount: Path, options: str, args: list[str], fill: bool = False) -> subprocess.CompletedProcess:
    """python -m bmteach ARGS with a fresh tmpfs (mount options OPTIONS) at MOUNT, in a private mount namespace;
    fill=True fills it up first."""
    mount.mkdir(parents=True, exist_ok=True)
    steps = [f"mount -t tmpfs -o {options} tmpfs {shlex.quote(str(mount))}"]
    if fill:
        steps.append(f"dd if=/dev/zero of={shlex.quote(str(mount / 'fill'))} bs=1k 2>/dev/null; true")
    steps.append(" ".join(shlex.quote(a) for a in [sys.executable, "-m", "bmteach", *args]))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(["unshare", "-rm", "sh", "-c", " && ".join(steps)], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=300)


def assert_one_sentence_naming(done, path: Path) -> None:
    err = done.stderr.strip()
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in err and "\n" not in err, err
    assert err.startswith("error: ") and str(path) in err and err.endswith("."), err


@needs_mount
@pytest.mark.parametrize("options, fill", [("ro", False), ("size=4k", True)], ids=["read-only", "full"])
def test_synth_on_a_read_only_or_full_disk(tmp_path, options, fill):
    out = tmp_path / "mnt" / "cells"
    done = on_disk(tmp_path / "mnt", options, ["synth", "--out", str(out), "--per-class", "2", "--classes", "BLA"],
                   fill=fill)
    assert_one_sentence_naming(done, out)


@needs_mount
@pytest.mark.parametrize("options, fill", [("ro", False), ("size=4k", True)], ids=["read-only", "full"])
def test_index_on_a_read_only_or_full_disk_names_the_manifest(tmp_path, data, options, fill):
    out = tmp_path / "mnt" / "manifest.csv"
    done = on_disk(tmp_path / "mnt", options, ["index", str(data), "--out", str(out)], fill=fill)
    assert_one_sentence_naming(done, out)
    assert ".tmp" not in done.stderr  # the manifest, not the temporary file beside it
    assert done.stdout == ""  # nothing claims success before the write failed


@needs_mount
@pytest.mark.parametrize("options", ["ro", "size=600k"], ids=["read-only", "full-mid-training"])
def test_train_on_a_read_only_or_full_disk(tmp_path, data, options):
    """600 kB hold the run's config and manifest but not the first checkpoint: the disk fills mid-training."""
    run = tmp_path / "mnt" / "run"
    done = on_disk(tmp_path / "mnt", options, ["train", "--data", str(data), "--out", str(run), *TRAIN])
    assert_one_sentence_naming(done, run)


def test_a_failed_write_without_a_file_name_names_the_output(tmp_path, data, monkeypatch, capsys):
    """Simulated (runs without mounts): every atomic write raises OSError(ENOSPC) with no file name."""
    import bmteach.storage as storage

    def full(*_, **__):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage, "_write_then_rename", full)
    out = tmp_path / "m.csv"
    assert cli.main(["index", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: Could not read or write {out}: No space left on device.\n"


def test_an_unnamed_os_error_names_the_commands_output(tmp_path, monkeypatch, capsys):
    """Simulated: a handler's write fails with no file name (a full disk under PIL or an append)."""
    def full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cli, "cli_synth", full)
    assert cli.main(["synth", "--out", str(tmp_path / "cells")]) == 2
    assert capsys.readouterr().err == f"error: Could not write under {tmp_path / 'cells'}: No space left on device.\n"


@pytest.mark.parametrize("command", ["train-out", "train-data", "synth-out", "index-out", "index-root"])
def test_a_symbolic_link_loop_is_one_sentence(tmp_path, data, capsys, command):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    args = {
        "train-out": ["train", "--data", str(data), "--out", str(loop), *TRAIN],
        "train-data": ["train", "--data", str(loop), "--out", str(tmp_path / "run"), *TRAIN],
        "synth-out": ["synth", "--out", str(loop / "cells"), "--per-class", "1", "--classes", "BLA"],
        "index-out": ["index", str(data), "--out", str(loop / "m.csv")],
        "index-root": ["index", str(loop), "--out", str(tmp_path / "m.csv")],
    }[command]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(loop) in err and "\n" not in err and err.endswith("."), err


def test_an_image_size_a_checkpoint_would_refuse_is_refused_before_training(tmp_path, data, capsys):
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), *TRAIN[:-4], "--image-size", "60000"]
    assert cli.main(args) == 2
    assert "--image-size must be from 16 to 1024" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
