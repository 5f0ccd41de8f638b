"""Where bmteach keeps what it writes (BMTEACH_HOME) and how it writes it (atomically)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bmteach.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
DEMO_RUN = MODELS_DIR / "demo"


def resolve_path(path: str | Path) -> Path:
    """PATH made absolute with its symbolic links followed. A link loop (Path.resolve raises RuntimeError before
    Python 3.13, OSError ELOOP after) or a NUL character is a UserError naming the path, never a traceback."""
    text = str(path)
    if "\x00" in text:
        raise UserError(f"The path {text!r} contains a NUL character: no folder or file can have that name.")
    path = Path(text).expanduser()
    try:
        return path.resolve()
    except (RuntimeError, OSError, ValueError) as exc:
        why = "it is a loop of symbolic links that point at each other" if _is_loop(exc) else str(exc)
        raise UserError(f"{path} leads nowhere: {why}.") from None


def _is_loop(exc: Exception) -> bool:
    import errno

    return isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP


def make_folder(path: Path) -> Path:
    """mkdir -p PATH; a read-only disk, a full disk or a file in the way is a UserError naming the folder."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"bmteach cannot create the folder {path} ({exc.strerror or exc}): give it a writable "
                        "place with BMTEACH_HOME.") from None
    return path


def home() -> Path:
    """The one folder for runtime state: $BMTEACH_HOME, else .bmteach/ inside the checkout (git-ignored). One
    that cannot be created (read-only, a link loop, a file in the way) is a UserError naming it."""
    return make_folder(resolve_path(os.environ.get("BMTEACH_HOME") or REPO_ROOT / ".bmteach"))


def default_data_dir() -> Path:
    """The embedded default data set: synthetic cells generated on first use."""
    return home() / "data" / "synthetic"


def runs_dir() -> Path:
    return make_folder(home() / "runs")


def cache_dir() -> Path:
    return make_folder(home() / "cache")


def _umask() -> int:
    """The process's umask: from /proc (thread-safe), else by setting it and putting it back at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file. A read-only or
    full disk raises an OSError naming PATH (not the temporary file, and not nothing as a failed write() does)."""
    path = Path(path)
    try:
        _write_then_rename(path, data)
    except OSError as exc:
        if exc.filename is None or Path(exc.filename).name.startswith(f".{path.name}."):
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def _write_then_rename(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the normal mode so others may read runs
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
