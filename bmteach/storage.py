"""Where bmteach keeps what it writes (BMTEACH_HOME) and how it writes it (atomically)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
DEMO_RUN = MODELS_DIR / "demo"


def home() -> Path:
    """The one folder for runtime state: $BMTEACH_HOME, else .bmteach/ inside the checkout (git-ignored)."""
    path = Path(os.environ.get("BMTEACH_HOME") or REPO_ROOT / ".bmteach").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_data_dir() -> Path:
    """The embedded default data set: synthetic cells generated on first use."""
    return home() / "data" / "synthetic"


def runs_dir() -> Path:
    path = home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    path = home() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)
