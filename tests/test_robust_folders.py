"""Issue 14, item 3: folders the app meets never raise a traceback.

Symbolic-link loops as the data or run folder (typed in the settings form, through BMTEACH_DATA / BMTEACH_RUN,
or in a hand-edited settings.json), a damaged settings.json that must not lock the instructor out of the form
that fixes it, and a BMTEACH_HOME the app cannot write. Every case is one sentence on the page.

Tests run as root here, so permission bits cannot make a folder read-only. Two kinds of fixture stand in:
  * real failures root cannot bypass: BMTEACH_HOME below a regular file (mkdir raises NotADirectoryError), a
    file where the app wants a folder;
  * a monkeypatched write (storage.atomic_write_bytes / Path.mkdir raising PermissionError(EROFS)) for an
    existing home whose disk turned read-only; each such test says so in its docstring.
The command line's read-only and full disks are real mounts (tests/test_cli_disk.py).
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import one_sentence, run_page
from streamlit.testing.v1 import AppTest

from bmteach import settings, storage, ui
from bmteach.classes import ABBRS
from bmteach.errors import UserError
from bmteach.models import ModelMeta, create_model, save_checkpoint
from bmteach.storage import REPO_ROOT
from bmteach.synth import generate_dataset

HOME = str(REPO_ROOT / "app.py")  # the home page runs through app.py's navigation (its page links need it)
PAGES = [HOME] + [str(REPO_ROOT / "pages" / p.file) for items in ui.present_pages().values() for p in items
                  if p.file != ui.HOME_PAGE]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """2 synthetic cells per class and a one-fold run with random weights (enough for the settings to accept)."""
    root = tmp_path_factory.mktemp("robust")
    data = generate_dataset(root / "data", per_class=1, seed=0, workers=1)
    run = root / "run"
    torch.manual_seed(0)
    meta = ModelMeta(model="sequential", image_size=32, fold=0, epochs=1, epoch=1, complete=True)
    save_checkpoint(create_model("sequential", len(ABBRS)), meta, run / "fold0" / "model.pt")
    return data, run


@pytest.fixture
def loops(tmp_path):
    """Three ways a path can loop: a link to itself, two links to each other, and a path through a loop."""
    (tmp_path / "self").symlink_to(tmp_path / "self")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    return [tmp_path / "self", tmp_path / "a", tmp_path / "self" / "inside"]


@pytest.fixture
def clean(fresh_home, monkeypatch):
    for name in (settings.DATA_ENV, settings.RUN_ENV, settings.SECRET_ENV):
        monkeypatch.delenv(name, raising=False)
    return fresh_home


def page_texts(at: AppTest) -> list[str]:
    return [e.value for kind in ("error", "warning", "info") for e in list(getattr(at, kind))
            + list(getattr(at.sidebar, kind))]


# --- typed in the settings form -------------------------------------------------------------------------------

def test_a_symlink_loop_typed_as_a_folder_is_one_sentence(clean, loops):
    for loop in loops:
        for check in (settings.validate_data_dir, settings.validate_run_dir):
            with pytest.raises(UserError) as err:
                check(str(loop))
            one_sentence(str(err.value))
        with pytest.raises(UserError):
            settings.save_choices(str(loop), None)
        with pytest.raises(UserError) as err:
            settings.save_choices(None, str(loop))
        assert "loop" in str(err.value)
    assert not settings.settings_path().exists()  # nothing saved on an error


@pytest.mark.parametrize("field", ["setting_data", "setting_run"])
def test_a_loop_typed_in_the_home_form_is_one_sentence(clean, tiny, loops, field, monkeypatch):
    monkeypatch.setenv(settings.DATA_ENV, str(tiny[0]))  # the page itself shows a usable data set
    monkeypatch.setenv(settings.SECRET_ENV, "s3cret")
    at = run_page(HOME)
    at.text_input(key="home_instructor_secret").input("s3cret").run()
    at.text_input(key=field).input(str(loops[1])).run()
    at.button(key="save_settings").click().run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and str(loops[1]) in errors[0], errors
    one_sentence(errors[0])
    assert not settings.settings_path().exists()


def test_the_path_resolver_names_a_loop_and_a_nul_character(loops):
    with pytest.raises(UserError, match="loop of symbolic links"):
        storage.resolve_path(loops[1])
    with pytest.raises(UserError, match="NUL"):
        storage.resolve_path("/tmp/bad\x00name")


# --- through the environment or a hand-edited settings.json: every page ------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=lambda p: Path(p).name)
def test_a_loop_through_the_environment_is_one_sentence_on_every_page(clean, loops, page, monkeypatch):
    monkeypatch.setenv(settings.DATA_ENV, str(loops[0]))
    monkeypatch.setenv(settings.RUN_ENV, str(loops[1]))
    monkeypatch.setenv(settings.SECRET_ENV, "s3cret")
    at = run_page(page)
    said = page_texts(at)
    assert any(str(loops[0]) in t for t in said), said


def test_a_loop_in_a_hand_edited_settings_file_is_one_sentence(clean, loops):
    settings.settings_path().write_text(json.dumps({"data_dir": str(loops[1]), "run_dir": str(loops[0])}))
    choice = settings.active_data_dir()  # not validated here, and no RuntimeError either
    assert choice.source == "setting"
    at = run_page(HOME)
    said = page_texts(at)
    assert any("loop" in t and str(loops[1]) in t for t in said), said
    for text in said:
        one_sentence(text)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "null", '{"data_dir": "/x\\u0000y"}', "\udcff"])
def test_a_broken_settings_file_does_not_lock_the_instructor_out(clean, tiny, content, monkeypatch):
    """The home page still shows the form, and saving replaces the damaged file with good settings."""
    data, run = tiny
    path = settings.settings_path()
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    monkeypatch.setenv(settings.SECRET_ENV, "s3cret")
    monkeypatch.setenv(settings.DATA_ENV, str(data))  # no minute-long default generation; the form still saves
    at = run_page(HOME)
    at.text_input(key="home_instructor_secret").input("s3cret").run()
    assert not at.exception, [e.value for e in at.exception]
    at.text_input(key="setting_data").input(str(data)).run()
    at.text_input(key="setting_run").input(str(run)).run()
    at.button(key="save_settings").click().run()
    assert not at.exception, [e.value for e in at.exception]
    saved = json.loads(path.read_text())
    assert saved == {"data_dir": str(data.resolve()), "run_dir": str(run.resolve())}


def test_a_settings_file_that_is_a_folder_is_one_sentence(clean, tiny, monkeypatch):
    monkeypatch.setenv(settings.DATA_ENV, str(tiny[0]))
    settings.settings_path().mkdir()
    assert settings.load_settings() == settings.Settings()  # read as no settings
    with pytest.raises(UserError, match="could not be saved") as err:
        settings.save_choices(str(tiny[0]), None)
    one_sentence(str(err.value))
    run_page(HOME)


# --- a BMTEACH_HOME the app cannot write --------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=lambda p: Path(p).name)
def test_a_home_that_cannot_be_created_is_one_sentence_on_every_page(tmp_path, page, monkeypatch):
    """A real failure even for root: BMTEACH_HOME lies below a regular file, so mkdir raises NotADirectoryError."""
    (tmp_path / "plain-file").write_text("not a folder")
    home = tmp_path / "plain-file" / "home"
    monkeypatch.setenv("BMTEACH_HOME", str(home))
    for name in (settings.DATA_ENV, settings.RUN_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(settings.SECRET_ENV, "s3cret")
    at = run_page(page)
    said = page_texts(at)
    assert any(str(home) in t for t in said), said


ALL_PAGES_SCRIPT = """
import json, logging, sys
logging.disable(logging.CRITICAL)
from streamlit.testing.v1 import AppTest
out = {}
for page in sys.argv[1:]:
    at = AppTest.from_file(page, default_timeout=240)
    at.run()
    said = [e.value for k in ("error", "warning", "info") for e in list(getattr(at, k)) + list(getattr(at.sidebar, k))]
    out[page] = {"exceptions": [e.value for e in at.exception], "said": said}
print(json.dumps(out))
"""


@pytest.mark.parametrize("with_data", [False, True], ids=["defaults", "data-and-run-set"])
def test_every_page_on_a_real_read_only_home(tmp_path, tiny, with_data):
    """A real read-only disk: an empty tmpfs mounted read-only as BMTEACH_HOME in a private mount namespace
    (`unshare -rm`; skipped, with the reason, where it cannot mount). Every page renders without an exception;
    with the defaults, the built-in data set cannot be drawn and the pages say so in a sentence."""
    import shlex
    import subprocess
    import sys

    home = tmp_path / "ro-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (settings.DATA_ENV, settings.RUN_ENV)}
    env.update({"BMTEACH_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)})
    if with_data:
        env.update({settings.DATA_ENV: str(tiny[0]), settings.RUN_ENV: str(tiny[1])})
    run = " ".join(shlex.quote(a) for a in [sys.executable, "-c", ALL_PAGES_SCRIPT, *PAGES])
    done = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(home))} && {run}"],
                          capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=900)
    if done.returncode != 0 and "mount" in done.stderr:
        pytest.skip(f"no private read-only mount here: {done.stderr.strip()[:200]}")
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for page, result in results.items():
        assert not result["exceptions"], (page, result)
        if not with_data:
            assert any("Read-only file system" in t for t in result["said"]), (page, result["said"])


def test_home_runs_dir_and_cache_dir_name_the_folder(tmp_path, monkeypatch):
    (tmp_path / "plain-file").write_text("not a folder")
    monkeypatch.setenv("BMTEACH_HOME", str(tmp_path / "plain-file" / "home"))
    for make in (storage.home, storage.runs_dir, storage.cache_dir):
        with pytest.raises(UserError, match="plain-file/home") as err:
            make()
        one_sentence(str(err.value))
    assert settings.known_runs() is not None  # lists the shipped runs without a home


def test_a_failing_default_generation_is_one_sentence(clean, monkeypatch):
    """A real failure: the home exists but a regular file sits where the data folder goes (the child process
    that draws the cells cannot create it)."""
    (clean / "data").parent.mkdir(parents=True, exist_ok=True)
    (clean / "data").write_text("in the way")
    at = run_page(HOME)
    errors = [e.value for e in at.error]
    assert errors and "could not be generated" in errors[0], errors


def test_saving_settings_on_a_read_only_home_is_one_sentence(clean, tiny, monkeypatch):
    """Simulated: tests run as root, so the write is monkeypatched to raise PermissionError(EROFS)."""
    data, _ = tiny

    def read_only(*_, **__):
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(settings.settings_path()))

    monkeypatch.setattr(settings, "atomic_write_json", read_only)
    monkeypatch.setenv(settings.DATA_ENV, str(data))
    with pytest.raises(UserError, match="could not be saved") as err:
        settings.save_choices(str(data), None)
    one_sentence(str(err.value))
    monkeypatch.setenv(settings.SECRET_ENV, "s3cret")
    at = run_page(HOME)
    at.text_input(key="home_instructor_secret").input("s3cret").run()
    at.text_input(key="setting_data").input(str(data)).run()
    at.button(key="save_settings").click().run()
    assert not at.exception
    assert any("could not be saved" in e.value for e in at.error)


def test_a_read_only_runs_folder_still_lists_the_shipped_runs(clean, monkeypatch):
    """Simulated: Path.mkdir raises PermissionError(EROFS) for BMTEACH_HOME/runs (root ignores mode bits)."""
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name == "runs":
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(UserError, match="runs"):
        storage.runs_dir()
    assert isinstance(settings.known_runs(), list)
