"""Finding images in a data folder and splitting them into stratified cross-validation folds (loading one
image safely is bmteach.images).

Two layouts are understood, both "one folder per class" under a data root:
  - the real TCIA layout `BM_cytomorphology_data/<ABBR>/[<range>/]<ABBR>_<n>.jpg` (ROOT may be that folder
    or its parent holding exactly one such folder);
  - any folder-per-class data set whose folder names are mapped onto our 21 classes by a CSV (folder,abbr).
Every path the index returns is relative to the ROOT it was given (POSIX separators), so a manifest always
goes with that ROOT. Indexing never decodes images unless asked (`verify=True`): cheap checks (extension,
size, magic bytes, end-of-image marker) keep 171,374 files to seconds.
"""
from __future__ import annotations

import csv
import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bmteach.classes import ABBRS, BY_ABBR
from bmteach.errors import BadImageError, UserError
from bmteach.images import END_MARKERS, IMAGE_EXTENSIONS, check_relpath, has_end_marker, load_image, sniff_format
from bmteach.storage import atomic_write_text

# --- what counts as an image -------------------------------------------------------------------------------

SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})
# Written by the synthetic generator beside the class folders; not data, not worth reporting.
SYNTH_OWNED = frozenset({"masks", "synth.json"})

# Reasons a file or folder is skipped; fixed strings so reports can group by them.
SKIP_HIDDEN = "hidden or system file"
SKIP_EXTENSION = "not an image (file extension)"
SKIP_EMPTY = "empty file"
SKIP_CONTENT = "not an image (content is no known image format)"
SKIP_TRUNCATED = "truncated image (no end-of-image marker)"
SKIP_UNREADABLE = "unreadable (permission or I/O error)"
SKIP_CORRUPT = "cannot be decoded"
SKIP_UNKNOWN_CLASS = "unknown class folder (not one of the 21 abbreviations; use a mapping CSV)"
SKIP_EXCLUDED = "folder excluded by the mapping"
SKIP_LOOSE = "file outside the class folders"
SKIP_LINK_OUTSIDE = "symbolic link leading outside the data folder"
SKIP_LINKED_FOLDER = "symbolic link to a folder inside a class folder (not followed)"
SKIP_LINKED_CLASS = "symbolic link to another class folder (its images would get a second label)"
SKIP_BROKEN_LINK = "symbolic link that leads nowhere or loops"
SKIP_NOT_REGULAR = "not a regular file (a pipe, device or socket)"
SKIP_BAD_NAME = "name is not valid UTF-8 (rename it)"

def quick_check(path: str | os.PathLike) -> str | None:
    """Why a file is not a usable image (a SKIP_* reason), or None when it looks fine. Reads 48 bytes, decodes
    nothing: a pipe or device, an empty file, foreign content and a JPEG/PNG/GIF cut short (no end marker) are
    caught."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # opening a FIFO must not wait for a writer
    except OSError:
        return SKIP_UNREADABLE
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return SKIP_NOT_REGULAR
        head = os.read(fd, 16)
        if not head:
            return SKIP_EMPTY
        fmt = sniff_format(head)
        if fmt is None:
            return SKIP_CONTENT
        if fmt in END_MARKERS:
            size = os.lseek(fd, 0, os.SEEK_END)
            if not has_end_marker(fmt, os.pread(fd, 32, max(0, size - 32))):
                return SKIP_TRUNCATED
        return None
    except OSError:
        return SKIP_UNREADABLE
    finally:
        os.close(fd)


def _is_hidden(name: str) -> bool:
    # Covers .DS_Store, AppleDouble "._x.jpg", .git and friends, Thumbs.db, desktop.ini, __MACOSX.
    return name.startswith(".") or name.lower() in SYSTEM_FILES


# --- the index ---------------------------------------------------------------------------------------------

@dataclass
class IndexResult:
    """Images found under `root`: (relpath, abbr) pairs, and what was skipped as (relpath, reason)."""
    root: Path
    items: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    class_root: Path | None = None  # the folder holding the class folders: root itself or its one data folder

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.items]

    @property
    def labels(self) -> list[str]:
        return [a for _, a in self.items]

    def counts(self) -> dict[str, int]:
        """Images per class, in the canonical class order, classes with no image left out."""
        found = pd.Series(self.labels, dtype=object).value_counts()
        return {a: int(found[a]) for a in ABBRS if a in found.index}

    def skipped_by_reason(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for rel, reason in self.skipped:
            groups.setdefault(reason, []).append(rel)
        return groups


def read_mapping(path: str | Path) -> dict[str, str]:
    """A class-mapping CSV (columns folder,abbr; ',' or ';' separated) -> {folder name: abbr or '' to exclude}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Mapping file not found: {path}.")
    text = path.read_text(encoding="utf-8-sig")
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = ";" if ";" in first and "," not in first else ","
    rows = list(csv.DictReader(io.StringIO(text), delimiter=delimiter))
    header = {(k or "").strip().lower(): k for k in (rows[0].keys() if rows else [])}
    if "folder" not in header or "abbr" not in header:
        raise UserError(f"{path.name}: a mapping CSV needs the columns folder,abbr (found: {first or 'nothing'}).")
    mapping: dict[str, str] = {}
    for line_no, row in enumerate(rows, start=2):
        folder = (row[header["folder"]] or "").strip()
        abbr = (row[header["abbr"]] or "").strip().upper()
        abbr = "" if abbr in ("-", "NONE") else abbr
        if not folder:
            continue
        if abbr and abbr not in BY_ABBR:
            raise UserError(f"{path.name}:{line_no}: {abbr!r} is not one of the 21 classes ({', '.join(ABBRS)}).")
        if mapping.get(folder, abbr) != abbr:
            raise UserError(f"{path.name}:{line_no}: folder {folder!r} is mapped twice, to different classes.")
        mapping[folder] = abbr
    return mapping


def _as_mapping(mapping) -> dict[str, str] | None:
    if mapping is None or isinstance(mapping, dict):
        return mapping
    return read_mapping(mapping)


def _label_of(name: str, mapping: dict[str, str] | None) -> str | None:
    """The class of a class folder: the mapping's word first ('' = excluded), else an exact upper-case
    abbreviation; None when unknown. Other spellings (bla, Blast) only through the mapping."""
    if mapping:
        if name in mapping:
            return mapping[name]
        folded = {k.casefold(): v for k, v in mapping.items()}
        if name.casefold() in folded:
            return folded[name.casefold()]
    return name if name in BY_ABBR else None


def _kind(entry: os.DirEntry) -> str:
    """'dir', 'file' (regular), 'other' (a pipe, device or socket) or 'broken' (a symbolic link that leads
    nowhere or loops: asking it raises OSError, which must not stop a walk)."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
        return "broken" if entry.is_symlink() and not os.path.exists(entry.path) else "other"
    except OSError:
        return "broken"


def _is_utf8(name: str) -> bool:
    # os.scandir hands undecodable bytes back as lone surrogates; a manifest, a page or stdout cannot hold them.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(rel: str) -> str:
    """A path as a report can show it: undecodable bytes as \\xNN."""
    return rel if _is_utf8(rel) else os.fsencode(rel).decode("utf-8", "backslashreplace")


def _is_dir(entry: os.DirEntry) -> bool:
    """entry.is_dir(), False where it cannot be told (a symbolic link loop raises OSError there)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _subfolders(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if _is_dir(e) and not _is_hidden(e.name) and e.name not in SYNTH_OWNED),
                      key=lambda e: e.name)


def _holds_class_folders(folder: Path, mapping) -> bool:
    try:
        return any(_label_of(e.name, mapping) is not None for e in _subfolders(folder))
    except OSError:
        return False


def find_class_root(root, mapping=None, required: bool = True) -> Path:
    """The folder whose sub-folders are the classes. THE rule for what counts as a data root, used by the index,
    the app's settings and `train` alike (docs/formats.md):

    1. ROOT must be an existing, readable, non-empty folder;
    2. a class folder is a sub-folder named exactly by one of the 21 abbreviations (BLA, not bla or Blast), or
       named in the mapping (matched ignoring case); hidden folders, masks/ and synth.json never are;
    3. the classes are in ROOT itself when at least one of its sub-folders is a class folder; else in the one
       sub-folder of ROOT that holds class folders (ROOT/BM_cytomorphology_data, the folder TCIA's download
       makes); two or more such sub-folders are ambiguous.

    Returns the folder that holds the class folders, resolved. Anything else is a UserError (one sentence); with
    required=False, a ROOT without class folders is returned as it is (the index then reports what it skipped).
    """
    root = _check_root(root)
    mapping = _as_mapping(mapping)
    if _holds_class_folders(root, mapping):
        return root
    try:
        inside = _subfolders(root)
    except OSError as exc:
        raise UserError(f"Data folder {root} cannot be read ({exc.strerror or exc}).") from None
    candidates = [Path(e.path) for e in inside if _holds_class_folders(Path(e.path), mapping)]
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise UserError(f"{root} holds several data sets ({names}): point at one of them.")
    if candidates:
        return candidates[0]
    if required:
        raise UserError(f"{root} has no class folders (BLA, PMO, NGS, ...): point at the folder that holds them, "
                        "such as BM_cytomorphology_data.")
    return root


def _check_root(root) -> Path:
    if root is None or str(root).strip() == "":
        raise UserError("No data folder given.")
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(f"Data folder not found: {path}.")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a data folder.")
    try:
        with os.scandir(path) as it:
            empty = next(it, None) is None
    except OSError as exc:
        raise UserError(f"Data folder {path} cannot be read ({exc.strerror or exc}).") from None
    if empty:
        raise UserError(f"Data folder {path} is empty.")
    return path.resolve()


class _Scanner:
    """Walks the class folders with os.scandir, collecting images and skip reasons."""

    def __init__(self, root: Path, verify: bool):
        self.root, self.verify = root, verify
        self.root_prefix = os.path.join(str(root), "")  # "/data/" (and "/" for the root itself)
        self.items: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []

    def rel(self, path: str) -> str:
        # Every scanned path starts with root + os.sep (scandir joins names onto it): slicing is enough.
        rel = path[len(self.root_prefix):]
        return rel.replace(os.sep, "/") if os.sep != "/" else rel

    def skip(self, path: str, reason: str, folder: bool = False) -> None:
        self.skipped.append((_printable(self.rel(path)) + ("/" if folder else ""), reason))

    def link_leaves_root(self, entry: os.DirEntry) -> bool:
        target = os.path.realpath(entry.path)
        return target != str(self.root) and not target.startswith(self.root_prefix)

    def check_file(self, path: str) -> str | None:
        reason = quick_check(path)
        if reason is None and self.verify:
            try:
                load_image(path, max_bytes=None)
            except BadImageError:
                reason = SKIP_CORRUPT
        return reason

    def scan_class_folder(self, folder: str, abbr: str) -> None:
        stack = [folder]
        while stack:
            current = stack.pop()
            try:
                with os.scandir(current) as it:
                    entries = list(it)
            except OSError:
                self.skip(current, SKIP_UNREADABLE, folder=True)
                continue
            for e in entries:
                self.visit(e, abbr, stack)

    def visit(self, e: os.DirEntry, abbr: str, stack: list[str]) -> None:
        kind = _kind(e)
        folder = kind == "dir"
        if not _is_utf8(e.name):
            self.skip(e.path, SKIP_BAD_NAME, folder)
        elif _is_hidden(e.name):
            self.skip(e.path, SKIP_HIDDEN, folder)
        elif e.is_symlink() and self.link_leaves_root(e):
            self.skip(e.path, SKIP_LINK_OUTSIDE)
        elif kind == "broken":
            self.skip(e.path, SKIP_BROKEN_LINK)
        elif folder:
            if e.is_symlink():  # never followed below the class level: no loops, no double counting
                self.skip(e.path, SKIP_LINKED_FOLDER, folder=True)
            else:
                stack.append(e.path)
        elif os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS:
            self.skip(e.path, SKIP_EXTENSION)
        elif kind != "file":  # a FIFO named .jpg would block the first read forever
            self.skip(e.path, SKIP_NOT_REGULAR)
        else:
            reason = self.check_file(e.path)
            if reason is None:
                self.items.append((self.rel(e.path), abbr))
            else:
                self.skip(e.path, reason)


def index(root, mapping=None, verify: bool = False) -> IndexResult:
    """Find the images under ROOT (see the module docstring for the layouts).

    mapping: None, a dict {folder: abbr ('' excludes the folder)} or the path of a folder,abbr CSV.
    verify: fully decode every image (slow; the default only makes cheap checks).
    Returns relpaths relative to ROOT, sorted. Missing/empty ROOT or no image at all: UserError.
    """
    root = _check_root(root)
    mapping = _as_mapping(mapping)
    class_root = find_class_root(root, mapping, required=False)
    scanner = _Scanner(root, verify)
    with os.scandir(class_root) as it:
        entries = sorted(it, key=lambda e: e.name)
    folders = {os.path.realpath(e.path) for e in entries if not e.is_symlink() and _is_dir(e)}
    for e in entries:
        kind = _kind(e)
        if e.name in SYNTH_OWNED:
            continue
        if not _is_utf8(e.name):
            scanner.skip(e.path, SKIP_BAD_NAME, kind == "dir")
        elif _is_hidden(e.name):
            scanner.skip(e.path, SKIP_HIDDEN, kind == "dir")
        elif e.is_symlink() and scanner.link_leaves_root(e):
            scanner.skip(e.path, SKIP_LINK_OUTSIDE)
        elif kind == "broken":
            scanner.skip(e.path, SKIP_BROKEN_LINK)
        elif kind != "dir":
            scanner.skip(e.path, SKIP_LOOSE)
        elif e.is_symlink() and os.path.realpath(e.path) in folders:  # NGB -> BLA: the same cells, two labels
            scanner.skip(e.path, SKIP_LINKED_CLASS, folder=True)
        else:
            label = _label_of(e.name, mapping)
            if label is None:
                scanner.skip(e.path, SKIP_UNKNOWN_CLASS, folder=True)
            elif label == "":
                scanner.skip(e.path, SKIP_EXCLUDED, folder=True)
            else:
                scanner.scan_class_folder(e.path, label)
    result = IndexResult(root, sorted(scanner.items), sorted(scanner.skipped), class_root)
    if not result.items:
        raise UserError(_no_images_message(result))
    return result


def _no_images_message(result: IndexResult) -> str:
    reasons = "; ".join(f"{len(v)} {k}" for k, v in result.skipped_by_reason().items())
    return (f"No usable images found under {result.root}: expected one folder per class named by the 21 "
            f"abbreviations (BLA/, EOS/, ...) or a mapping CSV" + (f" (skipped: {reasons})." if reasons else "."))


# --- folds -------------------------------------------------------------------------------------------------

def _stratified_folds(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Each class shuffled and dealt round-robin; the dealer carries on from class to class, so per-class and
    total fold sizes both differ by at most one (a class smaller than k still lands in distinct folds)."""
    folds = np.empty(len(y), dtype=np.int64)
    start = 0
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        folds[idx] = (start + np.arange(len(idx))) % k
        start = (start + len(idx)) % k
    return folds


def _group_folds(y: np.ndarray, groups, k: int, rng: np.random.Generator) -> np.ndarray:
    """Like sklearn's StratifiedGroupKFold: whole groups, greedily put where the class proportions across
    folds stay most even (ties: the fold with fewest images). Groups are shuffled first, then taken from the
    most class-concentrated to the least."""
    ids = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    gid = np.array([ids[g] for g in groups])
    counts = np.zeros((len(ids), int(y.max()) + 1))
    np.add.at(counts, (gid, y), 1)
    totals = counts.sum(0)
    order = rng.permutation(len(ids))
    order = order[np.argsort(-counts[order].std(axis=1), kind="stable")]
    fold_counts = np.zeros((k, counts.shape[1]))
    group_fold = np.empty(len(ids), dtype=np.int64)
    eye = np.eye(k)[:, :, None]
    for g in order:
        trial = fold_counts[None] + eye * counts[g][None, None, :]           # (choice, fold, class)
        spread = (trial / totals).std(axis=1).mean(axis=1)                    # (choice,)
        best = np.flatnonzero(np.isclose(spread, spread.min()))
        f = best[np.argmin(fold_counts[best].sum(axis=1))]
        fold_counts[f] += counts[g]
        group_fold[g] = f
    return group_fold[gid]


def assign_folds(labels, k: int = 5, seed: int = 0, groups=None) -> np.ndarray:
    """A fold number 0..k-1 per image: stratified by label (like StratifiedKFold with shuffle), or with
    `groups` (one value per image: patient, slide) by whole groups (like StratifiedGroupKFold)."""
    if int(k) < 2:
        raise UserError(f"Cross-validation needs at least 2 folds (got {k}).")
    labels = list(labels)
    if not labels:
        return np.zeros(0, dtype=np.int64)
    _, y = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    rng = np.random.default_rng(seed)
    if groups is None:
        return _stratified_folds(y, int(k), rng)
    groups = list(groups)
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} labels: give one group per image.")
    return _group_folds(y, groups, int(k), rng)


# --- manifest ----------------------------------------------------------------------------------------------

MANIFEST_COLUMNS = ("path", "label", "fold")


def read_groups(path: str | Path) -> dict[str, str]:
    """A groups CSV (columns path,group; path relative to the data root) -> {path: group}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Groups file not found: {path}.")
    df = _read_csv(path, "groups file")
    missing = [c for c in ("path", "group") if c not in df.columns]
    if missing:
        raise UserError(f"{path.name}: a groups CSV needs the columns path,group (missing: {', '.join(missing)}).")
    return {check_relpath(p).as_posix(): g for p, g in zip(df["path"], df["group"]) if g.strip()}


def build_manifest(result: IndexResult, k: int = 5, seed: int = 0, groups: dict[str, str] | None = None
                   ) -> pd.DataFrame:
    """DataFrame path,label,fold (+group when `groups` {path: group} is given; an image without a group is a
    group of its own, its group cell left empty)."""
    paths, labels = result.paths, result.labels
    df = pd.DataFrame({"path": paths, "label": labels})
    if groups is None:
        df["fold"] = assign_folds(labels, k, seed)
        return df
    group_of = [groups.get(p, "") for p in paths]
    keys = [("group", g) if g else ("own", p) for p, g in zip(paths, group_of)]
    df["fold"] = assign_folds(labels, k, seed, groups=keys)
    df["group"] = group_of
    return df


def _validate_manifest(df: pd.DataFrame, name: str) -> pd.DataFrame:
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{name}: not a manifest, missing column(s) {', '.join(missing)} (need path,label,fold).")
    if df.empty:
        raise UserError(f"{name}: the manifest has no images.")
    bad = df.index[~df["label"].isin(ABBRS)]
    if len(bad):
        rows = ", ".join(f"line {i + 2}: {df.at[i, 'label']!r}" for i in bad[:3])
        raise UserError(f"{name}: unknown class label(s) ({rows}); labels must be among {', '.join(ABBRS)}.")
    folds = pd.to_numeric(df["fold"], errors="coerce")
    bad = df.index[folds.isna() | (folds < 0) | (folds % 1 != 0)]
    if len(bad):
        raise UserError(f"{name}: line {bad[0] + 2}: fold {df.at[bad[0], 'fold']!r} is not a whole number >= 0.")
    for p in df["path"]:
        check_relpath(p)
    dupes = df["path"][df["path"].duplicated()]
    if len(dupes):
        raise UserError(f"{name}: image {dupes.iloc[0]!r} is listed more than once.")
    out = df.copy()
    out["fold"] = folds.astype(np.int64)
    return out


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    """Validate, then write atomically (readers never see half a manifest)."""
    df = _validate_manifest(df.reset_index(drop=True), Path(path).name)
    columns = list(MANIFEST_COLUMNS) + [c for c in df.columns if c not in MANIFEST_COLUMNS]
    atomic_write_text(path, df[columns].to_csv(index=False, lineterminator="\n"))


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path.name} is not a readable {what} CSV ({str(exc).splitlines()[0]}).") from None


def read_manifest(path: str | Path) -> pd.DataFrame:
    """A manifest CSV -> DataFrame path,label,fold(int)[,group]; a clear UserError when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Manifest not found: {path}.")
    return _validate_manifest(_read_csv(path, "manifest"), path.name)
