"""Issue 14, items 3 and 6: pages catch what they can and say it in one sentence. An image deleted while the
server runs, a damaged run manifest or metrics file, a quiz database that cannot be opened: a sentence on the
page, never a traceback."""
from __future__ import annotations

import errno
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_untrained_run, one_sentence, run_page

from bmteach import settings, ui
from bmteach.errors import UserError
from bmteach.storage import REPO_ROOT
from bmteach.synth import generate_dataset

HOME, ATLAS, EXPLAIN, TEACHER = (str(REPO_ROOT / p) for p in (
    "app.py", "pages/1_Atlas.py", "pages/3_Explain.py", "pages/7_Teacher.py"))


@pytest.fixture
def tiny(tmp_path):
    """Per test (a test below deletes an image): 2 synthetic cells per class, a two-fold run of random weights."""
    data = generate_dataset(tmp_path / "data", per_class=2, seed=0, workers=1)
    run = tmp_path / "run"
    make_untrained_run(data, run)
    return data, run


def test_an_image_deleted_while_the_server_runs_is_one_sentence_on_explain(env):
    """The index still lists the image (its folder's mtime is put back, as on a file system with coarse times or
    a network share that caches them); picking it says it is gone instead of a FileNotFoundError traceback."""
    data, _ = env
    at = run_page(EXPLAIN)  # the index is built and cached; the default class's images are read
    victim = sorted(p for p in (data / "NGS").rglob("*.jpg"))[0]
    folder = victim.parent
    before = folder.stat()
    victim.unlink()
    os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
    at.selectbox(key="explain_class").select("NGS").run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and victim.name in errors[0] and "not there any more" in errors[0], errors
    one_sentence(errors[0])


def test_a_damaged_run_manifest_leaves_the_home_page_working(env):
    _, run = env
    (run / "manifest.csv").write_bytes(b"\xff\xfe not,a\nmanifest\x00")
    at = run_page(HOME)
    assert at.metric  # the data set's counts are still shown


@pytest.mark.parametrize("content", ["[1, 2]", "null", '"metrics"'])
def test_a_metrics_file_that_is_not_an_object_is_no_evaluation_on_the_atlas(env, content):
    _, run = env
    (run / "metrics.json").write_text(content)
    at = run_page(ATLAS)
    assert any("no evaluation yet" in i.value for i in at.info)


def test_a_quiz_database_that_cannot_be_opened_is_one_sentence_on_the_teacher_page(env, monkeypatch):
    """Simulated: Store() raises sqlite's 'attempt to write a readonly database' (root ignores mode bits); the
    real read-only disk is the next test."""
    import bmteach.store as store
    from sqlalchemy.exc import OperationalError

    def read_only(self, url=None):
        raise OperationalError("CREATE TABLE", {}, Exception("attempt to write a readonly database"))

    monkeypatch.setattr(store.Store, "__init__", read_only)
    monkeypatch.setattr(store, "_shared", {})
    monkeypatch.setenv(settings.SECRET_ENV, "s3cret")
    at = run_page(TEACHER)
    at.text_input(key="teacher_secret").input("s3cret").run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "quiz database" in errors[0] and "readonly" in errors[0], errors
    one_sentence(errors[0])


def test_the_quiz_database_on_a_read_only_disk_is_one_sentence(tmp_path):
    """A real read-only tmpfs in a private mount namespace (skipped where `unshare -rm` cannot mount)."""
    home = tmp_path / "ro-home"
    home.mkdir()
    code = "from bmteach.store import open_store; open_store()"
    script = f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(home))} && {sys.executable} -c {shlex.quote(code)}"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "BMTEACH_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}, timeout=120)
    if "mount" in done.stderr and "UserError" not in done.stderr:
        pytest.skip(f"no private tmpfs mount here: {done.stderr.strip()[:200]}")
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("bmteach.errors.UserError: The quiz database ") and "Read-only" in last, done.stderr


def test_or_stop_turns_user_and_os_errors_into_one_sentence():
    assert ui.error_sentence(UserError("The run is gone.")) == "The run is gone."
    assert ui.error_sentence(FileNotFoundError(errno.ENOENT, "x", "/d/a.jpg")) == (
        "/d/a.jpg is not there any more (moved or deleted since the page was opened?).")
    assert ui.error_sentence(PermissionError(errno.EROFS, os.strerror(errno.EROFS), "/h/s.json")) == (
        "/h/s.json cannot be read or written (Read-only file system).")


@pytest.mark.parametrize("content", [b"\xff\xfe,,\n\x00", b"a,b\n1,2\n"], ids=["garbage", "wrong-columns"])
def test_a_damaged_oof_file_leaves_explain_working(env, content):
    """Explain's 'only the wrong ones' filter reads the run's predictions: a damaged oof.csv turns the filter off
    instead of raising (the Errors page is where the file's problem is named)."""
    _, run = env
    (run / "oof.csv").write_bytes(content)
    at = run_page(EXPLAIN)
    assert at.get("imgs") or at.image or at.dataframe  # the page went on to the image and its probabilities


PAGES = [HOME] + [str(REPO_ROOT / "pages" / p.file) for items in ui.present_pages().values() for p in items
                  if p.file != ui.HOME_PAGE]


def _damage_data(data) -> None:
    """Odd entries inside the data set, each next to good images: a self-referencing link, a FIFO, a file name
    that is not UTF-8, a class folder linked to another, a folder named like an image, an empty image, a
    dangling link, a looping sub-folder of the root."""
    import shutil

    bla = next((data / "BLA").iterdir())
    good = next(bla.glob("*.jpg")).read_bytes()  # before the FIFO exists: reading that would wait forever
    (bla / "loop.jpg").symlink_to(bla / "loop.jpg")
    os.mkfifo(bla / "pipe.jpg")
    Path(os.fsdecode(bytes(bla) + b"/\xff\xfe.jpg")).write_bytes(good)
    shutil.rmtree(data / "NGB")
    (data / "NGB").symlink_to(data / "BLA")
    (bla / "x.jpg").mkdir()
    (bla / "e.jpg").write_bytes(b"")
    (bla / "gone.jpg").symlink_to("/nonexistent/gone.jpg")
    (data / "loopdir").symlink_to(data / "loopdir")


def _damage_run(run) -> None:
    """Every run file a page reads, damaged at once (fold models intact): config, manifest, predictions,
    metrics."""
    (run / "config.json").write_text("[1]")
    (run / "manifest.csv").write_bytes(b"\xff\xfe\x00")
    (run / "oof.csv").write_bytes(b"\xff\xfe,,\n\x00")
    (run / "metrics.json").write_text("[]")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: Path(p).name)
def test_every_page_survives_a_damaged_data_set_and_run(env, page):
    data, run = env
    _damage_data(data)
    _damage_run(run)
    run_page(page)
