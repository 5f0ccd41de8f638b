"""The import rules of architecture.md, checked on the source: pages are thin (no torch, Captum, UMAP, SQL or
cleanlab), only ui.py imports Streamlit, and atomic writes leave no half file when a write fails."""
from __future__ import annotations

import ast
import errno
from pathlib import Path

import pytest

from bmteach import storage

REPO = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "torchvision", "captum", "umap", "sqlalchemy", "cleanlab", "psycopg", "sklearn", "numba"}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module imported anywhere in a file (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("page", sorted((REPO / "pages").glob("*.py")) + [REPO / "app.py"], ids=lambda p: p.name)
def test_pages_import_no_heavy_library(page):
    assert imported_modules(page) & HEAVY == set()


def test_only_ui_imports_streamlit():
    offenders = [p.relative_to(REPO).as_posix() for p in sorted((REPO / "bmteach").rglob("*.py"))
                 if p.name != "ui.py" and "streamlit" in imported_modules(p)]
    assert offenders == []


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "settings.json"
    storage.atomic_write_json(target, {"old": True})

    def full_disk(fd):  # the data reaches the disk at fsync: that is where a full disk shows
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        storage.atomic_write_bytes(target, b"x" * (1 << 20))
    monkeypatch.undo()
    assert storage.read_json(target) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]
