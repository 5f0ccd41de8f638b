"""Finding images, loading them safely, and splitting them into stratified cross-validation folds.

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
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from bmteach.classes import ABBRS, BY_ABBR
from bmteach.errors import BadImageError, UserError
from bmteach.storage import atomic_write_text

# --- what counts as an image -------------------------------------------------------------------------------

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"})
# Only these Pillow decoders are ever used: exotic plugins (EPS runs Ghostscript, ...) never see user files.
ALLOWED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP")
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})
# Written by the synthetic generator beside the class folders; not data, not worth reporting.
SYNTH_OWNED = frozenset({"masks", "synth.json"})

DEFAULT_MAX_PIXELS = 40_000_000      # a 48-megapixel phone photo is refused; a 12-megapixel one is fine
DEFAULT_MAX_SIDE = 20_000            # refuses absurd strips such as 1 x 30,000,000
DEFAULT_MAX_BYTES = 25 * 1024 * 1024  # upload size limit

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

_TRAILING_PADDING = b"\x00\r\n\t "
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82", "GIF": b"\x3b"}


def sniff_format(head: bytes) -> str | None:
    """The image format announced by a file's first bytes (magic numbers), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _has_end_marker(fmt: str, tail: bytes) -> bool:
    marker = _END_MARKERS.get(fmt)
    return marker is None or tail.rstrip(_TRAILING_PADDING).endswith(marker)


def quick_check(path: str | os.PathLike) -> str | None:
    """Why a file is not a usable image (a SKIP_* reason), or None when it looks fine. Reads 48 bytes, decodes
    nothing: an empty file, foreign content and a JPEG/PNG/GIF cut short (no end marker) are caught."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return SKIP_UNREADABLE
    try:
        head = os.read(fd, 16)
        if not head:
            return SKIP_EMPTY
        fmt = sniff_format(head)
        if fmt is None:
            return SKIP_CONTENT
        if fmt in _END_MARKERS:
            size = os.lseek(fd, 0, os.SEEK_END)
            if not _has_end_marker(fmt, os.pread(fd, 32, max(0, size - 32))):
                return SKIP_TRUNCATED
        return None
    except OSError:
        return SKIP_UNREADABLE
    finally:
        os.close(fd)


def _is_hidden(name: str) -> bool:
    # Covers .DS_Store, AppleDouble "._x.jpg", .git and friends, Thumbs.db, desktop.ini, __MACOSX.
    return name.startswith(".") or name.lower() in SYSTEM_FILES


# --- loading one image safely ------------------------------------------------------------------------------

def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    name = getattr(source, "name", None)
    return str(name) if isinstance(name, str) and name else "the image data"


def _read_source(source, max_bytes: int | None) -> bytes:
    """The bytes of a path, a bytes object or a file-like (an upload), refusing more than max_bytes."""
    what = _describe(source)
    limit = f"{max_bytes / 2**20:.0f} MiB" if max_bytes else ""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise BadImageError(f"Image file not found: {path}.")
        if max_bytes and path.stat().st_size > max_bytes:
            raise BadImageError(f"{what} is larger than the {limit} limit for one image.")
        try:
            return path.read_bytes()
        except OSError as exc:
            raise BadImageError(f"{what} cannot be read ({exc.strerror or exc}).") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "getvalue"):  # BytesIO and Streamlit's UploadedFile: the whole upload
        data = source.getvalue()
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1) if max_bytes else source.read()
    else:
        raise BadImageError(f"Cannot read an image from a {type(source).__name__}.")
    if max_bytes and len(data) > max_bytes:
        raise BadImageError(f"{what} is larger than the {limit} limit for one image.")
    return data


def _not_an_image_message(what: str, data: bytes) -> str:
    start = data[:256].lstrip().lower()
    if start.startswith((b"<svg", b"<?xml")) or b"<svg" in start:
        return f"{what} is an SVG drawing, not a photograph of a cell: upload a JPEG, PNG or TIFF image."
    if start.startswith((b"<!doctype", b"<html")):
        return f"{what} is a web page (HTML), not an image: upload a JPEG, PNG or TIFF image."
    return f"{what} is not an image bmteach can read (JPEG, PNG, TIFF, BMP, GIF or WebP)."


def _scale_to_uint8(im: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer and float grey images to 0..255. Only I;16 has a fixed range; for I and F the
    values decide: 0..1 floats, 0..255, 0..65535, else the image's own min..max."""
    a = np.nan_to_num(np.asarray(im).astype(np.float64))
    if im.mode.startswith("I;16"):
        a = a / 257.0
    else:
        lo, hi = float(a.min()), float(a.max())
        if im.mode == "F" and lo >= 0 and hi <= 1:
            a = a * 255.0
        elif lo >= 0 and hi <= 255:
            pass
        elif lo >= 0 and hi <= 65535:
            a = a / 257.0
        else:
            a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparent parts are composited on white (a slide's bright background)."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return Image.fromarray(_scale_to_uint8(im), "L").convert("RGB")
    if _has_alpha(im):
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")


def _open_checked(data: bytes, what: str, max_pixels: int, max_side: int) -> Image.Image:
    """Open (headers only) with the allowed decoders and refuse sizes before any pixel is decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below decides
        try:
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except Image.DecompressionBombError:
            raise BadImageError(f"{what} declares an absurd size (a decompression bomb?): refused.") from None
        except Exception:
            raise BadImageError(_not_an_image_message(what, data)) from None
    w, h = im.size
    if w < 1 or h < 1 or w > max_side or h > max_side or w * h > max_pixels:
        raise BadImageError(
            f"{what} is {w}x{h} pixels: too large to load safely (limit {max_pixels:,} pixels, "
            f"{max_side:,} per side)."
        )
    return im


def load_image(source, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int | None = DEFAULT_MAX_BYTES,
               max_side: int = DEFAULT_MAX_SIDE) -> Image.Image:
    """A path, bytes, file-like (e.g. a Streamlit upload) or PIL image -> a fully decoded PIL RGB image.

    Any mode (grey, 16-bit, float, palette, RGBA composited on white, CMYK, 1-bit); the first frame of a
    multi-frame file; EXIF orientation applied. Empty, text, SVG/HTML, truncated or corrupt files, files over
    max_bytes and images over max_pixels raise BadImageError with one sentence for the user.
    """
    if isinstance(source, Image.Image):  # already decoded (e.g. by a caller's own loader): just normalise
        w, h = source.size
        if w * h > max_pixels or max(w, h) > max_side:
            raise BadImageError(f"The image is {w}x{h} pixels: too large to use (limit {max_pixels:,} pixels).")
        return to_rgb(source)
    what = _describe(source)
    data = _read_source(source, max_bytes)
    if not data:
        raise BadImageError(f"{what} is empty (0 bytes).")
    im = _open_checked(data, what, max_pixels, max_side)
    try:
        im.seek(0)  # multi-frame files (GIF, TIFF, MPO): the first frame
        im.load()
    except Exception as exc:  # truncated or corrupt data raises OSError, SyntaxError, ValueError, struct.error...
        raise BadImageError(f"{what} is truncated or corrupt and cannot be decoded ({exc}).") from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block should not cost the picture: keep it unrotated
        pass
    return to_rgb(im)


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


def _subfolders(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if e.is_dir() and not _is_hidden(e.name) and e.name not in SYNTH_OWNED),
                      key=lambda e: e.name)


def _holds_class_folders(folder: Path, mapping) -> bool:
    try:
        return any(_label_of(e.name, mapping) is not None for e in _subfolders(folder))
    except OSError:
        return False


def find_class_root(root: Path, mapping=None) -> Path:
    """The folder whose sub-folders are the classes: ROOT itself, or the one data folder inside ROOT
    (e.g. ROOT/BM_cytomorphology_data). Several candidate data folders are ambiguous: a clear error."""
    mapping = _as_mapping(mapping)
    if _holds_class_folders(root, mapping):
        return root
    candidates = [Path(e.path) for e in _subfolders(root) if _holds_class_folders(Path(e.path), mapping)]
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise UserError(f"{root} holds several data sets ({names}): point at one of them.")
    return candidates[0] if candidates else root


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
                self.skipped.append((self.rel(current) + "/", SKIP_UNREADABLE))
                continue
            for e in entries:
                self.visit(e, abbr, stack)

    def visit(self, e: os.DirEntry, abbr: str, stack: list[str]) -> None:
        if _is_hidden(e.name):
            self.skipped.append((self.rel(e.path) + ("/" if e.is_dir() else ""), SKIP_HIDDEN))
        elif e.is_symlink() and self.link_leaves_root(e):
            self.skipped.append((self.rel(e.path), SKIP_LINK_OUTSIDE))
        elif e.is_dir():
            if e.is_symlink():  # never followed below the class level: no loops, no double counting
                self.skipped.append((self.rel(e.path) + "/", SKIP_LINKED_FOLDER))
            else:
                stack.append(e.path)
        elif os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS:
            self.skipped.append((self.rel(e.path), SKIP_EXTENSION))
        else:
            reason = self.check_file(e.path)
            if reason is None:
                self.items.append((self.rel(e.path), abbr))
            else:
                self.skipped.append((self.rel(e.path), reason))


def index(root, mapping=None, verify: bool = False) -> IndexResult:
    """Find the images under ROOT (see the module docstring for the layouts).

    mapping: None, a dict {folder: abbr ('' excludes the folder)} or the path of a folder,abbr CSV.
    verify: fully decode every image (slow; the default only makes cheap checks).
    Returns relpaths relative to ROOT, sorted. Missing/empty ROOT or no image at all: UserError.
    """
    root = _check_root(root)
    mapping = _as_mapping(mapping)
    class_root = find_class_root(root, mapping)
    scanner = _Scanner(root, verify)
    with os.scandir(class_root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.name in SYNTH_OWNED or _is_hidden(e.name):
            if e.name not in SYNTH_OWNED:
                scanner.skipped.append((scanner.rel(e.path) + ("/" if e.is_dir() else ""), SKIP_HIDDEN))
        elif e.is_symlink() and scanner.link_leaves_root(e):
            scanner.skipped.append((scanner.rel(e.path), SKIP_LINK_OUTSIDE))
        elif not e.is_dir():
            scanner.skipped.append((scanner.rel(e.path), SKIP_LOOSE))
        else:
            label = _label_of(e.name, mapping)
            if label is None:
                scanner.skipped.append((scanner.rel(e.path) + "/", SKIP_UNKNOWN_CLASS))
            elif label == "":
                scanner.skipped.append((scanner.rel(e.path) + "/", SKIP_EXCLUDED))
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


# --- paths -------------------------------------------------------------------------------------------------

def check_relpath(relpath: str) -> PurePosixPath:
    """A manifest path as a clean relative POSIX path; absolute paths and '..' are refused (UserError)."""
    text = str(relpath).replace("\\", "/")  # a manifest written on Windows
    if not text or text.strip() == "" or "\x00" in text:
        raise UserError(f"Invalid image path {relpath!r} in the data set.")
    rel = PurePosixPath(text)
    if rel.is_absolute() or (len(text) > 1 and text[1] == ":"):
        raise UserError(f"Image path {relpath!r} is absolute: paths must be relative to the data folder.")
    if ".." in rel.parts:
        raise UserError(f"Image path {relpath!r} leads outside the data folder ('..').")
    if rel.parts in ((), (".",)):
        raise UserError(f"Invalid image path {relpath!r} in the data set.")
    return rel


def safe_join(root, relpath: str) -> Path:
    """ROOT / relpath, resolved, refusing absolute paths, '..' and symbolic links leading outside ROOT."""
    base = Path(root).expanduser().resolve()
    target = (base / check_relpath(relpath)).resolve()
    if not target.is_relative_to(base):
        raise UserError(f"Image path {relpath!r} leads outside the data folder (symbolic link).")
    return target


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
