"""Loading one image safely: sniffing the format, size limits before decoding, decoding, EXIF, RGB.

Accepts a path, bytes, a file-like (a Streamlit upload) or a PIL image and returns a fully decoded RGB image,
or raises BadImageError with one sentence for the person. Only the Pillow decoders in ALLOWED_FORMATS ever see
a file. `safe_join` turns a data-set path into a file path that cannot leave its data folder.
"""
from __future__ import annotations

import io
import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageChops

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


# Decoding memory. Every image is decoded whole, so its cost is known from the header alone: pixels times the
# peak bytes per pixel of the path below (the decoded frame, the grey or RGB image made from it, a transposed
# copy, strip buffers). A float TIFF of 6,324 x 6,324 px is 155 KB on disk and took 1.07 GB to load when the
# conversions copied the whole image to float64; strip by strip it would take ~400 MB, over the limit: past max_decode_bytes a JPEG is decoded at 1/2, 1/4 or 1/8 scale
# (libjpeg's DCT scaling, `draft`), anything else is refused before decoding.
DEFAULT_MAX_DECODE_BYTES = 320 * 2**20
BYTES_PER_PIXEL = {"1": 6, "L": 6, "P": 6, "RGB": 6, "YCbCr": 6, "LAB": 6, "HSV": 6, "I;16": 6, "I;16L": 6,
                   "I;16B": 6, "I;16N": 6, "LA": 7, "La": 7, "PA": 7, "RGBA": 7, "RGBa": 7, "RGBX": 7, "CMYK": 7,
                   "I": 10, "F": 10}
# Decodes costing more than this wait for each other: a class uploading large files at once costs one large
# decode at a time, not thirty (the Streamlit server decodes in one process, a thread per session).
LARGE_DECODE_BYTES = 64 * 2**20
_LARGE_DECODES = threading.BoundedSemaphore(1)
_STRIP_PIXELS = 1 << 20  # conversions work on strips of about this many pixels, not on whole-image copies
_JPEG_SCALES = (2, 4, 8)


def decode_cost(mode: str, size: tuple[int, int]) -> int:
    """Peak bytes that load_image needs to decode and convert an image of this mode and size."""
    return size[0] * size[1] * BYTES_PER_PIXEL.get(mode, 10)


def _strips(im: Image.Image):
    """(left, upper, right, lower) boxes of horizontal strips covering the image, about _STRIP_PIXELS each."""
    w, h = im.size
    rows = max(1, _STRIP_PIXELS // max(w, 1))
    for top in range(0, h, rows):
        yield 0, top, w, min(h, top + rows)


def _strip_values(im: Image.Image, box) -> np.ndarray:
    return np.nan_to_num(np.asarray(im.crop(box)).astype(np.float64))


def _scale_to_uint8(im: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer and float grey images to 0..255. Only I;16 has a fixed range; for I and F the
    values decide: 0..1 floats, 0..255, 0..65535, else the image's own min..max. Strip by strip (two passes for
    I and F: the range, then the values), so the float64 copies stay small whatever the image size."""
    out = np.empty((im.size[1], im.size[0]), np.uint8)
    if im.mode.startswith("I;16"):
        scale = lambda a: a / 257.0  # noqa: E731
    else:
        lo, hi = np.inf, -np.inf
        for box in _strips(im):
            a = _strip_values(im, box)
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
        if im.mode == "F" and lo >= 0 and hi <= 1:
            scale = lambda a: a * 255.0  # noqa: E731
        elif lo >= 0 and hi <= 255:
            scale = lambda a: a  # noqa: E731
        elif lo >= 0 and hi <= 65535:
            scale = lambda a: a / 257.0  # noqa: E731
        else:
            scale = (lambda a: (a - lo) / (hi - lo) * 255.0) if hi > lo else np.zeros_like
    for box in _strips(im):
        out[box[1]:box[3]] = np.clip(np.rint(scale(_strip_values(im, box))), 0, 255).astype(np.uint8)
    return out


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _on_white(im: Image.Image) -> Image.Image:
    """Transparent parts composited on white (a slide's bright background), strip by strip."""
    out = Image.new("RGB", im.size)
    for box in _strips(im):
        part = im.crop(box).convert("RGBA")
        white = Image.new("RGBA", part.size, (255, 255, 255, 255))
        out.paste(Image.alpha_composite(white, part).convert("RGB"), box[:2])
    return out


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparent parts are composited on white (a slide's bright background)."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return Image.fromarray(_scale_to_uint8(im), "L").convert("RGB")
    if _has_alpha(im):
        return _on_white(im)
    return im.convert("RGB")


def _too_large(what: str, w: int, h: int, max_pixels: int, max_side: int) -> BadImageError:
    return BadImageError(f"{what} is {w}x{h} pixels: too large to load safely (limit {max_pixels:,} pixels, "
                         f"{max_side:,} per side).")


def _fits(size, mode: str, max_pixels: int, max_side: int, max_decode_bytes: int) -> bool:
    w, h = size
    return (1 <= w <= max_side and 1 <= h <= max_side and w * h <= max_pixels
            and decode_cost(mode, size) <= max_decode_bytes)


def _jpeg_draft(im: Image.Image, max_pixels: int, max_side: int, max_decode_bytes: int) -> bool:
    """Ask libjpeg for the smallest reduction (1/2, 1/4, 1/8) that fits the limits; False when none does."""
    w, h = im.size
    for s in _JPEG_SCALES:
        if _fits((-(-w // s), -(-h // s)), im.mode, max_pixels, max_side, max_decode_bytes):
            im.draft(im.mode, (w // s, h // s))
            return True
    return False


def _open_checked(data: bytes, what: str, max_pixels: int, max_side: int,
                  max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES) -> Image.Image:
    """Open (headers only) with the allowed decoders and refuse sizes before any pixel is decoded; a JPEG over
    the limits is set to decode at a reduced scale instead, when one fits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below decides
        try:
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except Image.DecompressionBombError:
            raise BadImageError(f"{what} declares an absurd size (a decompression bomb?): refused.") from None
        except Exception:
            raise BadImageError(_not_an_image_message(what, data)) from None
    if _fits(im.size, im.mode, max_pixels, max_side, max_decode_bytes):
        return im
    w, h = im.size
    if im.format in ("JPEG", "MPO") and w >= 1 and h >= 1 and _jpeg_draft(im, max_pixels, max_side,
                                                                       max_decode_bytes):
        return im
    if w < 1 or h < 1 or w > max_side or h > max_side or w * h > max_pixels:
        raise _too_large(what, w, h, max_pixels, max_side)
    need, limit = decode_cost(im.mode, im.size) / 2**20, max_decode_bytes / 2**20
    raise BadImageError(f"{what} is a {w}x{h} pixel image in mode {im.mode}: decoding it would take about "
                        f"{need:,.0f} MiB of memory (limit {limit:,.0f} MiB); save it as an 8-bit JPEG, PNG or TIFF "
                        "or make it smaller.")


@contextmanager
def _decode_slot(cost: int):
    """Large decodes one at a time (see LARGE_DECODE_BYTES); small ones never wait."""
    if cost <= LARGE_DECODE_BYTES:
        yield
        return
    with _LARGE_DECODES:
        yield


# A JPEG cut short and given an end marker decodes without any error: libjpeg fills the blocks it never got
# with zeros, a mid-grey lower part. Decoding again with these bytes (no 0xFF, so no marker) pasted before the
# end marker tells it: a complete scan never reads them, a cut one does and comes out different.
_SCAN_FILLER = b"\x5a\xa5\x3c\xc3" * 256


def _jpeg_cut_short(data: bytes, im: Image.Image) -> bool:
    """Whether a decoded JPEG's scan data stopped early. Only suspects pay for a second decode: a mid-grey
    bottom-right pixel (the last block a cut baseline file decodes) or a progressive file."""
    end = data.rfind(b"\xff\xd9")
    corner = np.atleast_1d(im.getpixel((im.size[0] - 1, im.size[1] - 1)))
    suspect = bool(np.isin(corner, (127, 128)).all()) or "progressive" in im.info or "progression" in im.info
    if end < 0 or not suspect:
        return False
    again = Image.open(io.BytesIO(data[:end] + _SCAN_FILLER + data[end:]), formats=("JPEG",))
    if again.size != im.size:  # `im` was drafted to a reduced scale: decode the same way
        again.draft(im.mode, im.size)
    try:
        again.load()
    except Exception:  # the filler upset the decoder: only a scan that read it can do that
        return True
    return again.mode != im.mode or ImageChops.difference(again, im).getbbox() is not None


def _transpose_of(im: Image.Image):
    """The transpose that EXIF orientation asks for, or None; a broken EXIF block keeps the picture unrotated."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:
        return None
    return _ORIENTATIONS.get(orientation)


_ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                 4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def load_image(source, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int | None = DEFAULT_MAX_BYTES,
               max_side: int = DEFAULT_MAX_SIDE, max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES) -> Image.Image:
    """A path, bytes, file-like (e.g. a Streamlit upload) or PIL image -> a fully decoded PIL RGB image.

    Any mode (grey, 16-bit, float, palette, RGBA composited on white, CMYK, 1-bit); the first frame of a
    multi-frame file; EXIF orientation applied. Empty, text, SVG/HTML, truncated or corrupt files (a JPEG cut
    short even when an end marker was pasted on), files over max_bytes, images over max_pixels or max_side and
    images whose decoding would need more than max_decode_bytes raise BadImageError with one sentence for the
    user; a JPEG over those limits is decoded at 1/2, 1/4 or 1/8 scale instead when that fits.
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
    im = _open_checked(data, what, max_pixels, max_side, max_decode_bytes)
    with _decode_slot(decode_cost(im.mode, im.size)):
        try:
            im.seek(0)  # multi-frame files (GIF, TIFF, MPO): the first frame
            im.load()
            cut_short = im.format in ("JPEG", "MPO") and _jpeg_cut_short(data, im)
        except Exception as exc:  # truncated or corrupt data: OSError, SyntaxError, ValueError, struct.error...
            raise BadImageError(f"{what} is truncated or corrupt and cannot be decoded ({exc}).") from None
        if cut_short:
            raise BadImageError(f"{what} is truncated (its image data stops early) and cannot be used.")
        transpose = _transpose_of(im)
        rgb = to_rgb(im)
        del im  # the decoded frame goes before a transposed copy is made
        return rgb.transpose(transpose) if transpose is not None else rgb


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
