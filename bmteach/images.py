"""Loading one image safely: sniffing the format, size limits before decoding, decoding, EXIF, RGB.

Accepts a path, bytes, a file-like (a Streamlit upload) or a PIL image and returns a fully decoded RGB image,
or raises BadImageError with one sentence for the person. Only the Pillow decoders in ALLOWED_FORMATS ever see
a file. `safe_join` turns a data-set path into a file path that cannot leave its data folder.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps

from bmteach.errors import BadImageError, UserError

# --- what counts as an image -------------------------------------------------------------------------------

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"})
# Only these Pillow decoders are ever used: exotic plugins (EPS runs Ghostscript, ...) never see user files.
ALLOWED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP")
DEFAULT_MAX_PIXELS = 40_000_000      # a 48-megapixel phone photo is refused; a 12-megapixel one is fine
DEFAULT_MAX_SIDE = 20_000            # refuses absurd strips such as 1 x 30,000,000
DEFAULT_MAX_BYTES = 25 * 1024 * 1024  # upload size limit

_TRAILING_PADDING = b"\x00\r\n\t "
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82", "GIF": b"\x3b"}


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


def has_end_marker(fmt: str, tail: bytes) -> bool:
    """Whether a file's last bytes end with its format's end marker (always True for formats without one)."""
    marker = END_MARKERS.get(fmt)
    return marker is None or tail.rstrip(_TRAILING_PADDING).endswith(marker)


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
