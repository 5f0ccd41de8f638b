"""bmteach.images: load_image (every odd mode to RGB with known pixels, EXIF orientation, refusals) and safe_join."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bmteach import images
from bmteach.errors import BadImageError, UserError
from bmteach.images import load_image, safe_join

REPO = Path(__file__).resolve().parent.parent


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def pixels(im: Image.Image) -> np.ndarray:
    assert im.mode == "RGB"
    return np.asarray(im).astype(int)


def grey_row(values, mode, dtype) -> Image.Image:
    return Image.fromarray(np.array([values], dtype=dtype), mode if mode != "I;16" else None)


# --- modes -------------------------------------------------------------------------------------------------

def test_grey_L():
    out = pixels(load_image(encode(Image.new("L", (3, 2), 100), "PNG")))
    assert out.shape == (2, 3, 3) and (out == 100).all()


def test_16_bit_grey_png_is_scaled_not_clipped():
    im = Image.fromarray(np.array([[0, 128 * 257, 65535]], dtype=np.uint16))
    assert im.mode == "I;16"
    out = pixels(load_image(encode(im, "PNG")))
    assert out[0, :, 0].tolist() == [0, 128, 255] and (out[..., 0] == out[..., 2]).all()


def test_32_bit_integer_tiff_in_16_bit_range():
    im = Image.fromarray(np.array([[0, 1028, 65535]], dtype=np.int32), "I")
    out = pixels(load_image(encode(im, "TIFF")))
    assert out[0, :, 1].tolist() == [0, 4, 255]


def test_float_tiff_in_0_1_and_outside():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert pixels(load_image(encode(unit, "TIFF")))[0, :, 0].tolist() == [0, 128, 255]
    signed = Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32), "F")  # own min..max
    assert pixels(load_image(encode(signed, "TIFF")))[0, :, 0].tolist() == [0, 128, 255]


def test_grey_with_alpha_is_composited_on_white():
    im = Image.new("LA", (3, 1))
    im.putdata([(50, 255), (50, 0), (50, 128)])
    out = pixels(load_image(encode(im, "PNG")))[0, :, 0]
    assert out[0] == 50 and out[1] == 255
    assert abs(out[2] - round(50 * 128 / 255 + 255 * 127 / 255)) <= 1  # 152


def test_rgba_transparent_is_white_opaque_kept():
    im = Image.new("RGBA", (2, 1))
    im.putdata([(200, 0, 0, 255), (0, 0, 200, 0)])
    out = pixels(load_image(encode(im, "PNG")))
    assert out[0, 0].tolist() == [200, 0, 0] and out[0, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt):
    im = Image.new("P", (2, 1), 0)
    im.putpalette([255, 0, 0, 0, 200, 0] + [0] * 762)
    im.putpixel((1, 0), 1)
    out = pixels(load_image(encode(im, fmt, transparency=0)))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [0, 200, 0]


def test_palette_without_transparency():
    im = Image.new("P", (1, 1), 0)
    im.putpalette([10, 20, 30] + [0] * 765)
    assert pixels(load_image(encode(im, "PNG")))[0, 0].tolist() == [10, 20, 30]


def test_cmyk_tiff_and_jpeg():
    red = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    assert pixels(load_image(encode(red, "TIFF")))[0, 0].tolist() == [255, 0, 0]
    white = pixels(load_image(encode(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG", quality=100)))
    assert (np.abs(white - 255) <= 2).all()


def test_one_bit():
    im = Image.new("1", (2, 1), 0)
    im.putpixel((1, 0), 1)
    out = pixels(load_image(encode(im, "PNG")))
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_multi_frame_gives_the_first_frame(fmt):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert pixels(load_image(data))[4, 4].tolist() == [255, 0, 0]


def test_exif_orientation_is_applied():
    # 64 wide x 32 high: left half red, right half blue; Orientation 6 = rotate 90 degrees clockwise to view.
    im = Image.new("RGB", (64, 32), (255, 0, 0))
    im.paste((0, 0, 255), (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load_image(encode(im, "JPEG", quality=95, exif=exif))
    assert out.size == (32, 64)
    a = pixels(out)
    assert a[8, 16, 0] > 200 and a[8, 16, 2] < 60    # top: what was the left (red)
    assert a[56, 16, 2] > 200 and a[56, 16, 0] < 60  # bottom: what was the right (blue)


def test_paths_bytes_and_file_likes(tmp_path):
    data = encode(Image.new("RGB", (5, 4), (1, 2, 3)), "PNG")
    path = tmp_path / "cell.png"
    path.write_bytes(data)
    for source in (path, str(path), data, bytearray(data), io.BytesIO(data)):
        im = load_image(source)
        assert im.size == (5, 4) and im.getpixel((0, 0)) == (1, 2, 3)


def test_pil_images_are_normalised_too():
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert pixels(load_image(rgba))[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(BadImageError, match="too large"):
        load_image(Image.new("L", (100, 100)), max_pixels=100)


def test_result_is_fully_decoded_and_detached(tmp_path):
    path = tmp_path / "cell.jpg"
    path.write_bytes(encode(Image.new("RGB", (8, 8), (90, 90, 90)), "JPEG"))
    im = load_image(path)
    path.unlink()  # a lazily decoded image would fail here
    assert abs(im.getpixel((4, 4))[0] - 90) <= 2


# --- refusals ----------------------------------------------------------------------------------------------

def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG that declares a huge size (decoding would need width*height bytes)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
            + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(BadImageError, match="absurd size|too large"):
        load_image(_png_header(100_000, 100_000))


def test_images_over_the_pixel_or_side_limit_are_refused():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(BadImageError, match=r"100x100 pixels: too large"):
        load_image(data, max_pixels=5_000)
    with pytest.raises(BadImageError, match="too large"):
        load_image(_png_header(30_000, 2))  # 60,000 pixels but an absurd side
    assert load_image(data, max_pixels=10_000).size == (100, 100)


def test_files_over_the_byte_limit_are_refused(tmp_path):
    data = encode(Image.new("RGB", (64, 64)), "BMP")  # ~12 KiB
    path = tmp_path / "big.bmp"
    path.write_bytes(data)
    for source in (data, io.BytesIO(data), path):
        with pytest.raises(BadImageError, match="larger than"):
            load_image(source, max_bytes=1024)


def test_truncated_and_corrupt_images():
    jpeg = encode(Image.effect_noise((64, 64), 60).convert("RGB"), "JPEG")
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        load_image(jpeg[: len(jpeg) // 2])
    png = encode(Image.effect_noise((64, 64), 60), "PNG")
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        load_image(png[: len(png) // 2])
    with pytest.raises(BadImageError):
        load_image(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)


def _noise_jpeg(mode="RGB", **kw) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8)).convert(mode)
    return encode(image, "JPEG", quality=90, **kw)


@pytest.mark.parametrize("mode, kw", [("RGB", {}), ("RGB", {"subsampling": "4:4:4"}), ("L", {}), ("CMYK", {})])
def test_jpeg_cut_short_with_an_end_marker_pasted_on_is_refused(mode, kw):
    """libjpeg decodes such a file without an error, its lower part mid-grey: it must not reach a model."""
    jpeg = _noise_jpeg(mode, **kw)
    for keep in (0.3, 0.6):
        cut = jpeg[: int(len(jpeg) * keep)] + b"\xff\xd9"
        with pytest.raises(BadImageError, match="truncated"):
            load_image(cut)
    assert load_image(jpeg).size == (128, 96)


def test_complete_jpegs_that_look_like_cut_ones_are_kept():
    # uniform mid-grey (the colour of missing blocks), progressive, and trailing padding after the end marker
    grey = encode(Image.new("RGB", (40, 24), (128, 128, 128)), "JPEG")
    assert pixels(load_image(grey))[5, 5].tolist() == [128, 128, 128]
    assert pixels(load_image(encode(Image.new("L", (16, 16), 128), "JPEG", progressive=True)))[0, 0, 0] == 128
    progressive = _noise_jpeg(progressive=True)
    assert np.array_equal(pixels(load_image(progressive)), np.asarray(Image.open(io.BytesIO(progressive))).astype(int))
    assert load_image(_noise_jpeg() + b"\x00" * 100).size == (128, 96)


def _float_tiff(width: int, height: int, rows_per_strip: int = 64) -> bytes:
    """A deflate-compressed float32 grey TIFF of zeros, written without holding its pixels (a few hundred KB
    for tens of megapixels)."""
    row = bytes(4 * width)
    strips = []
    for top in range(0, height, rows_per_strip):
        packer = zlib.compressobj(6)
        strips.append(b"".join(packer.compress(row) for _ in range(min(rows_per_strip, height - top)))
                      + packer.flush())
    body = b"".join(strips)
    offsets = [8 + sum(len(s) for s in strips[:i]) for i in range(len(strips))]
    arrays = struct.pack(f"<{len(strips)}I", *offsets) + struct.pack(f"<{len(strips)}I", *map(len, strips))
    at = 8 + len(body)
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 32), (259, 3, 1, 8), (262, 3, 1, 1),
            (273, 4, len(strips), at), (277, 3, 1, 1), (278, 4, 1, rows_per_strip),
            (279, 4, len(strips), at + 4 * len(strips)), (339, 3, 1, 3)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags) + bytes(4)
    return b"II*\x00" + struct.pack("<I", at + len(arrays)) + body + arrays + ifd


PEAK_PROBE = """
import json, resource, sys
from bmteach.images import load_image
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    out = list(load_image(data).size)
except Exception as exc:
    out = f"{type(exc).__name__}: {exc}"
print(json.dumps([(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, out]))
"""


def _peak_mib(tmp_path, data: bytes):
    """(growth of the peak resident memory in MiB while load_image runs, its size or error) in a fresh process."""
    path = tmp_path / "probe.tif"
    path.write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_decoding_memory_is_bounded_before_decoding(tmp_path):
    # The attack file: 6,324 x 6,324 float pixels (under the 40-megapixel limit) in ~150 KB. Loading it used to
    # take 1.07 GB and 6 s; now it is refused from its header.
    bomb = _float_tiff(6324, 6324)
    assert len(bomb) < 400_000
    grew, out = _peak_mib(tmp_path, bomb)
    assert out.startswith("BadImageError") and "memory" in out and "\n" not in out
    assert grew < 50, f"{grew:.0f} MiB to refuse it"
    # 4,000 x 4,000 float pixels are decoded, strip by strip: ~150 MiB (the whole-image float64 copies took 510)
    grew, out = _peak_mib(tmp_path, _float_tiff(4000, 4000))
    assert out == [4000, 4000]
    assert grew < 250, f"{grew:.0f} MiB for a 16-megapixel float image"


def test_strip_by_strip_conversions_give_the_whole_image_result(monkeypatch):
    rng = np.random.default_rng(1)
    floats = Image.fromarray((rng.standard_normal((37, 29)) * 1000).astype(np.float32), "F")
    sixteen = Image.fromarray((rng.random((37, 29)) * 65535).astype(np.uint16))
    rgba = Image.fromarray((rng.random((37, 29, 4)) * 255).astype(np.uint8), "RGBA")
    whole = [pixels(load_image(encode(im, "TIFF" if im.mode != "RGBA" else "PNG"))) for im in (floats, sixteen, rgba)]
    monkeypatch.setattr(images, "_STRIP_PIXELS", 50)  # a strip of one or two rows
    strips = [pixels(load_image(encode(im, "TIFF" if im.mode != "RGBA" else "PNG"))) for im in (floats, sixteen, rgba)]
    for a, b in zip(whole, strips):
        assert np.array_equal(a, b)
    a = np.asarray(floats, dtype=np.float64)  # the documented rule for a float image outside 0..1: own min..max
    expected = np.clip(np.rint((a - a.min()) / (a.max() - a.min()) * 255), 0, 255)
    assert np.array_equal(strips[0][..., 0], expected)


def test_a_jpeg_over_the_limits_is_decoded_at_a_reduced_scale():
    jpeg = encode(Image.new("RGB", (4000, 3000), (30, 90, 200)), "JPEG")
    im = load_image(jpeg, max_pixels=1_000_000)       # 1/2 would be 3 megapixels: 1/4 it is
    assert im.size == (1000, 750) and (np.abs(pixels(im)[10, 10] - [30, 90, 200]) <= 3).all()
    # by memory: the whole image needs 12 megapixels x 6 bytes = 69 MiB; at 1/2, 17 MiB
    assert load_image(jpeg, max_decode_bytes=20 * 2**20).size == (2000, 1500)
    with pytest.raises(BadImageError, match="too large"):
        load_image(jpeg, max_pixels=100_000)          # even 1/8 (500 x 375) is over
    with pytest.raises(BadImageError, match="too large"):  # other formats cannot be reduced while decoding
        load_image(encode(Image.new("RGB", (400, 300)), "PNG"), max_pixels=100_000)


def test_large_decodes_wait_for_each_other(monkeypatch):
    monkeypatch.setattr(images, "LARGE_DECODE_BYTES", 0)  # every decode counts as large
    inside, most = [0], [0]
    guard = threading.Lock()
    original = images.to_rgb

    def slow_to_rgb(im):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        with guard:
            inside[0] -= 1
        return original(im)

    monkeypatch.setattr(images, "to_rgb", slow_to_rgb)
    data = encode(Image.new("L", (8, 8), 7), "PNG")
    threads = [threading.Thread(target=load_image, args=(data,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert most[0] == 1


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"hello, this is a text file\n", "not an image"),
    (b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>", "SVG"),
    (b"<svg width='10' height='10'></svg>", "SVG"),
    (b"<!DOCTYPE html><html><body><img src='x.jpg'></body></html>", "web page"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image"),  # never handed to Ghostscript
])
def test_non_images_are_refused_with_one_sentence(content, message):
    with pytest.raises(BadImageError, match=message) as info:
        load_image(io.BytesIO(content))
    assert "\n" not in str(info.value)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_image(tmp_path / "nowhere.png")


def test_error_names_the_upload():
    upload = io.BytesIO(b"not an image")
    upload.name = "my_cell.jpg"
    with pytest.raises(BadImageError, match="^my_cell.jpg is not an image"):
        load_image(upload)


# --- safe_join ---------------------------------------------------------------------------------------------

@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    (root / "BLA" / "0001-1000").mkdir(parents=True)
    (root / "BLA" / "0001-1000" / "BLA_00001.jpg").write_bytes(encode(Image.new("RGB", (8, 8)), "JPEG"))
    (root / "ABE").mkdir()
    return root


def test_safe_join_accepts_relative_paths_inside_root(tree):
    assert safe_join(tree, "BLA/0001-1000/BLA_00001.jpg") == (tree / "BLA/0001-1000/BLA_00001.jpg").resolve()
    assert safe_join(tree, "BLA\\0001-1000\\BLA_00001.jpg").name == "BLA_00001.jpg"


@pytest.mark.parametrize("rel", ["/etc/passwd", "../secret.jpg", "BLA/../../x.jpg", "", "C:/x.jpg", ".",
                                 "..\\..\\x.jpg"])
def test_safe_join_refuses_escapes(tree, rel):
    with pytest.raises(UserError):
        safe_join(tree, rel)


def test_safe_join_refuses_symlinks_leading_outside(tree, tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(encode(Image.new("RGB", (8, 8)), "JPEG"))
    os.symlink(secret, tree / "ABE" / "link.jpg")
    with pytest.raises(UserError, match="outside the data folder"):
        safe_join(tree, "ABE/link.jpg")
