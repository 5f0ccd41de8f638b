"""Which data set and which run the app shows, and the instructor secret that guards changing them.

Order of precedence, most specific first:
  data set  BMTEACH_DATA env > instructor setting (BMTEACH_HOME/settings.json) > synthetic default
  run       BMTEACH_RUN env  > instructor setting                               > models/demo
No Streamlit here: ui.py passes st.secrets in when it has them.
"""
from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from bmteach.data import find_class_root
from bmteach.errors import UserError
from bmteach.runs import META, fold_checkpoint_dirs
from bmteach.storage import DEMO_RUN, atomic_write_json, default_data_dir, home, resolve_path

DATA_ENV = "BMTEACH_DATA"
RUN_ENV = "BMTEACH_RUN"
SECRET_ENV = "BMTEACH_INSTRUCTOR_SECRET"
SECRET_KEY = "instructor_secret"  # key in .streamlit/secrets.toml


@dataclass
class Settings:
    """What an instructor chose in the app; None means 'use the default'."""
    data_dir: str | None = None
    run_dir: str | None = None


@dataclass(frozen=True)
class Choice:
    """An active path and where it came from: 'env', 'setting' or 'default'."""
    path: Path
    source: str

    @property
    def is_default(self) -> bool:
        return self.source == "default"


def settings_path() -> Path:
    return home() / "settings.json"


def load_settings() -> Settings:
    """The saved settings; a missing file means defaults, a damaged one is one clear error."""
    path = settings_path()
    if not path.is_file():
        return Settings()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError, as are NaN-laden oddities
        raise UserError(f"The settings file {path} is damaged; save the settings again (or delete the file) to "
                        "go back to working ones.") from None
    except OSError as exc:
        raise UserError(f"The settings file {path} cannot be read ({exc.strerror or exc}).") from None
    if not isinstance(raw, dict):
        raise UserError(f"The settings file {path} does not hold settings; delete it to go back to the defaults.")
    return Settings(data_dir=_str_or_none(raw.get("data_dir")), run_dir=_str_or_none(raw.get("run_dir")))


def _str_or_none(value) -> str | None:
    return str(value) if isinstance(value, str) and value.strip() else None


def save_settings(settings: Settings) -> None:
    """Replace settings.json (a damaged one too); a read-only or full disk is one sentence naming the file."""
    path = settings_path()
    try:
        atomic_write_json(path, asdict(settings))
    except OSError as exc:
        raise UserError(f"The settings could not be saved to {path} ({exc.strerror or exc}).") from None


# --- validation: each failure is one sentence a teacher can act on --------------------------------------

def validate_data_dir(path: str | Path) -> Path:
    """The folder holding the class folders (BLA/, NGS/, ...): PATH itself, or the one data folder inside it
    such as PATH/BM_cytomorphology_data. One rule for every caller: `data.find_class_root` decides. The app uses
    the folder that holds the classes, so image paths stay relative to it (as in the manifest `index` writes)."""
    text = str(path).strip()
    if not text:
        raise UserError("Give the path of a data folder, e.g. /data/BM_cytomorphology_data.")
    return find_class_root(resolve_path(text), required=True)


def validate_run_dir(path: str | Path) -> Path:
    """A run folder with at least one trained fold (fold<k>/model.pt and meta.json)."""
    text = str(path).strip()
    if not text:
        raise UserError("Give the path of a run folder (made by `python -m bmteach train --out RUN`).")
    folder = resolve_path(text)
    if not folder.is_dir():
        raise UserError(f"The run folder {folder} does not exist.")
    if not trained_folds(folder):
        raise UserError(f"{folder} holds no trained fold (fold0/model.pt with meta.json): train it first or "
                        "choose another run.")
    return folder


def trained_folds(run_dir: str | Path) -> list[int]:
    """Fold numbers that have a checkpoint and its metadata, in order."""
    return [k for k, d in fold_checkpoint_dirs(run_dir) if (d / META).is_file()]


def known_runs() -> list[Path]:
    """Trained runs an instructor may pick without typing a path: models/* and BMTEACH_HOME/runs/*."""
    from bmteach.storage import MODELS_DIR, runs_dir

    parents = [MODELS_DIR]
    try:
        parents.append(runs_dir())
    except UserError:
        pass  # no writable home: only the shipped runs can be listed
    found = []
    for parent in parents:
        if parent.is_dir():
            found += [p for p in sorted(parent.iterdir()) if p.is_dir() and trained_folds(p)]
    return found


# --- what is active -------------------------------------------------------------------------------------

def active_data_dir(settings: Settings | None = None) -> Choice:
    """The data set the app shows (not validated here: the page says what is wrong with it)."""
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Choice(_absolute(env), "env")
    settings = settings if settings is not None else load_settings()
    if settings.data_dir:
        return Choice(_absolute(settings.data_dir), "setting")
    return Choice(_default_data_dir(), "default")


def active_run_dir(settings: Settings | None = None) -> Choice:
    """The run whose models the app uses (not validated here: it may not be trained yet)."""
    env = os.environ.get(RUN_ENV, "").strip()
    if env:
        return Choice(_absolute(env), "env")
    settings = settings if settings is not None else load_settings()
    if settings.run_dir:
        return Choice(_absolute(settings.run_dir), "setting")
    return Choice(DEMO_RUN, "default")


def _absolute(text: str) -> Path:
    """The path resolved, or only made absolute when it cannot be (a link loop): validation then says why."""
    try:
        return resolve_path(text)
    except UserError:
        return Path(text.replace("\x00", "")).expanduser().absolute()


def _default_data_dir() -> Path:
    """storage.default_data_dir, or where it would be when BMTEACH_HOME cannot be created (ui says why)."""
    try:
        return default_data_dir()
    except UserError:
        return Path(os.environ.get("BMTEACH_HOME") or "BMTEACH_HOME", "data", "synthetic")


def save_choices(data_dir: str | Path | None, run_dir: str | Path | None) -> Settings:
    """Validate both folders first, then save them together (empty = default); nothing is saved on an error."""
    data = validate_data_dir(data_dir) if data_dir and str(data_dir).strip() else None
    run = validate_run_dir(run_dir) if run_dir and str(run_dir).strip() else None
    settings = Settings(data_dir=str(data) if data else None, run_dir=str(run) if run else None)
    save_settings(settings)
    return settings


def _save_folder(field: str, path: str | Path | None, validate) -> Path | None:
    """Validate one folder and save it in the settings field; None or '' goes back to the default."""
    settings = load_settings()
    folder = validate(path) if path and str(path).strip() else None
    setattr(settings, field, str(folder) if folder else None)
    save_settings(settings)
    return folder


def set_data_dir(path: str | Path | None) -> Path | None:
    """Validate and save the instructor's data folder; None or '' goes back to the synthetic default."""
    return _save_folder("data_dir", path, validate_data_dir)


def set_run_dir(path: str | Path | None) -> Path | None:
    """Validate and save the instructor's run folder; None or '' goes back to the demo run."""
    return _save_folder("run_dir", path, validate_run_dir)


# --- instructor secret ----------------------------------------------------------------------------------

def instructor_secret(secrets: Mapping | None = None) -> str | None:
    """The configured secret: secrets.toml's instructor_secret first, then the environment; None if neither."""
    if secrets is not None:
        try:
            value = secrets.get(SECRET_KEY)
        except Exception:  # Streamlit raises when no secrets.toml exists at all
            value = None
        if isinstance(value, str) and value:
            return value
    return os.environ.get(SECRET_ENV) or None


def check_secret(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; no configured secret means nobody is let in."""
    if not expected or not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
