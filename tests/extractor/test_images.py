"""Decoding: every input mode becomes the same 8-bit RGB, and bad input fails with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from imagegen import encode as _encode
from imagegen import gradient as _gradient
from imagegen import png_header_claiming
from PIL import Image

from extractor.images import (
    MIN_SIDE,
    ImageError,
    ImageTooLargeError,
    decode_image,
    preprocess,
)


def test_rgb_png_decodes_to_square_uint8() -> None:
    out = decode_image(_encode(Image.fromarray(_gradient())), 32)
    assert out.shape == (32, 32, 3)
    assert out.dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    rgb = Image.fromarray(_gradient())
    if mode == "I;16":
        gray16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        im = Image.fromarray(gray16)
        assert im.mode == "I;16"
    elif mode == "F":
        im = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.float32) / 255.0)
    else:
        im = rgb.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "F", "I") else "PNG"
    out = decode_image(_encode(im, fmt), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    if mode in ("L", "LA", "I;16", "I", "F"):
        reference = decode_image(_encode(rgb.convert("L")), 32)
        # Wide grayscale is scaled into 0..255, not clipped: same picture as 8-bit grayscale.
        assert np.abs(out.astype(int) - reference.astype(int)).max() <= 1
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_palette_with_transparency_warns_nothing() -> None:
    im = Image.fromarray(_gradient()).convert("P")
    data = _encode(im, transparency=0)
    assert decode_image(data, 32).shape == (32, 32, 3)


def test_exif_orientation_is_applied() -> None:
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = 255  # left half white, right half black
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode_image(_encode(im, "JPEG", exif=exif.tobytes(), quality=95), 40)
    # After rotation the white half is on top.
    assert out[:15].mean() > 200 and out[-15:].mean() < 50


def test_jpeg_draft_mode_keeps_geometry() -> None:
    big = Image.fromarray(_gradient(1200, 900))
    out = decode_image(_encode(big, "JPEG", quality=95), 150)
    full = np.asarray(big.resize((150, 150), Image.Resampling.BILINEAR), dtype=np.int16)
    assert out.shape == (150, 150, 3)
    assert np.abs(out.astype(np.int16) - full).mean() < 3


@pytest.mark.parametrize(
    ("data", "error", "fragment"),
    [
        (b"", ImageError, "empty"),
        (b"hello, I am a text file\n", ImageError, "not an image"),
        (_encode(Image.new("RGB", (1, 1))), ImageError, "too small"),
        (_encode(Image.new("RGB", (MIN_SIDE - 1, 100))), ImageError, "too small"),
        (png_header_claiming(50_000, 50_000), ImageTooLargeError, "too large"),
    ],
)
def test_bad_input_raises_with_reason(data: bytes, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        decode_image(data, 32)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_an_image_error(fmt: str) -> None:
    data = _encode(Image.fromarray(_gradient(256, 256)), fmt)
    with pytest.raises(ImageError):
        decode_image(data[: len(data) // 2], 32)


def test_preprocess_equals_keras_preprocess_input() -> None:
    from keras.applications.vgg16 import preprocess_input

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    expected = preprocess_input(pixels.astype(np.float32))
    np.testing.assert_allclose(preprocess(pixels), expected, atol=1e-4)
