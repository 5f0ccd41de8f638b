"""bmteach.images: load_image (every odd mode to RGB with known pixels, EXIF orientation, refusals) and safe_join."""
from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from bmteach.images import load_image, safe_join
from bmteach.errors import BadImageError, UserError


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
