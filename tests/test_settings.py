"""Active data set / run precedence, validation sentences, atomic settings, the instructor secret."""
from __future__ import annotations

import json

import pytest

from bmteach import settings
from bmteach.errors import UserError
from bmteach.storage import DEMO_RUN


@pytest.fixture
def clean_env(fresh_home, monkeypatch):
    for name in (settings.DATA_ENV, settings.RUN_ENV, settings.SECRET_ENV):
        monkeypatch.delenv(name, raising=False)
    return fresh_home


def make_data(root):
    (root / "NGS").mkdir(parents=True)
    return root


def make_run(root, folds=(0,)):
    for k in folds:
        (root / f"fold{k}").mkdir(parents=True)
        (root / f"fold{k}" / "model.pt").write_bytes(b"x")
        (root / f"fold{k}" / "meta.json").write_text("{}")
    return root


def test_defaults_are_synthetic_data_and_demo_run(clean_env):
    data = settings.active_data_dir()
    assert data.source == "default" and data.path == clean_env.resolve() / "data" / "synthetic"
    run = settings.active_run_dir()
    assert run.source == "default" and run.path == DEMO_RUN


def test_setting_beats_default_and_env_beats_setting(clean_env, tmp_path, monkeypatch):
    a, b = make_data(tmp_path / "a"), make_data(tmp_path / "b")
    settings.set_data_dir(a)
    assert settings.active_data_dir() == settings.Choice(a.resolve(), "setting")
    monkeypatch.setenv(settings.DATA_ENV, str(b))
    assert settings.active_data_dir() == settings.Choice(b.resolve(), "env")

    r1, r2 = make_run(tmp_path / "r1"), make_run(tmp_path / "r2", folds=(0, 3))
    settings.set_run_dir(r1)
    assert settings.active_run_dir() == settings.Choice(r1.resolve(), "setting")
    monkeypatch.setenv(settings.RUN_ENV, str(r2))
    assert settings.active_run_dir() == settings.Choice(r2.resolve(), "env")
    assert settings.trained_folds(r2) == [0, 3]


def test_empty_setting_goes_back_to_default(clean_env, tmp_path):
    settings.set_data_dir(make_data(tmp_path / "a"))
    settings.set_data_dir("")
    assert settings.active_data_dir().source == "default"
    assert json.loads(settings.settings_path().read_text()) == {"data_dir": None, "run_dir": None}


def test_settings_file_is_written_atomically_and_leaves_no_temp_files(clean_env, tmp_path):
    settings.set_data_dir(make_data(tmp_path / "a"))
    assert [p.name for p in settings.settings_path().parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("layout, message", [
    (None, "not found"),
    ("file", "is a file"),
    ("empty", "is empty"),
    ("no classes", "has no class folders"),
])
def test_bad_data_folder_is_one_sentence(clean_env, tmp_path, layout, message):
    path = tmp_path / "d"
    if layout == "file":
        path.write_text("x")
    elif layout == "empty":
        path.mkdir()
    elif layout == "no classes":
        (path / "cells").mkdir(parents=True)
    with pytest.raises(UserError, match=message) as err:
        settings.set_data_dir(path)
    assert "\n" not in str(err.value)
    assert settings.active_data_dir().source == "default"  # nothing saved


def test_parent_of_the_tcia_folder_is_accepted_as_the_data_folder_itself(clean_env, tmp_path):
    inner = make_data(tmp_path / "download" / "BM_cytomorphology_data")
    assert settings.set_data_dir(tmp_path / "download") == inner.resolve()
    assert settings.active_data_dir() == settings.Choice(inner.resolve(), "setting")


def test_bad_run_folder_is_one_sentence(clean_env, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        settings.validate_run_dir(tmp_path / "nope")
    (tmp_path / "run" / "fold0").mkdir(parents=True)
    (tmp_path / "run" / "fold0" / "model.pt").write_bytes(b"x")  # no meta.json
    with pytest.raises(UserError, match="no trained fold"):
        settings.validate_run_dir(tmp_path / "run")


def test_damaged_settings_file_is_a_clear_error(clean_env):
    settings.settings_path().write_text("{not json")
    with pytest.raises(UserError, match="damaged"):
        settings.load_settings()


def test_instructor_secret_from_secrets_then_env(clean_env, monkeypatch):
    assert settings.instructor_secret() is None
    assert settings.instructor_secret({}) is None
    monkeypatch.setenv(settings.SECRET_ENV, "from-env")
    assert settings.instructor_secret({}) == "from-env"
    assert settings.instructor_secret({"instructor_secret": "from-toml"}) == "from-toml"


def test_secret_lookup_survives_a_secrets_object_that_raises(clean_env, monkeypatch):
    class NoFile(dict):
        def get(self, key, default=None):
            raise FileNotFoundError("no secrets.toml")
    monkeypatch.setenv(settings.SECRET_ENV, "s3")
    assert settings.instructor_secret(NoFile()) == "s3"


@pytest.mark.parametrize("given, expected, ok", [
    ("s3cret", "s3cret", True), ("wrong", "s3cret", False), ("", "s3cret", False),
    (None, "s3cret", False), ("anything", None, False), ("", "", False), ("é", "é", True),
])
def test_check_secret(given, expected, ok):
    assert settings.check_secret(given, expected) is ok


def test_known_runs_lists_trained_runs_under_home(clean_env):
    from bmteach.storage import runs_dir
    make_run(runs_dir() / "b")
    make_run(runs_dir() / "a", folds=(2,))
    (runs_dir() / "untrained" / "fold0").mkdir(parents=True)
    found = [p for p in settings.known_runs() if p.parent == runs_dir()]
    assert [p.name for p in found] == ["a", "b"]
