"""Image files made by the tests themselves: good ones, and every kind of bad input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def encode(im: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 64, h: int = 48, seed: int | None = None) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float32)
    y = np.linspace(0, 255, h, dtype=np.float32)
    r = np.broadcast_to(x, (h, w))
    g = np.broadcast_to(y[:, None], (h, w))
    b = (r + g) / 2
    arr = np.stack([r, g, b], axis=-1)
    if seed is not None:
        arr = arr + np.random.default_rng(seed).normal(0, 20, arr.shape)
    return np.clip(arr, 0, 255).round().astype(np.uint8)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_claiming(width: int, height: int) -> bytes:
    """A small file whose PNG header claims a huge image: a decompression bomb's signature."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def write_bad_files(folder: Path) -> dict[str, str]:
    """Every kind of bad input the extractor must survive -> a fragment of its reason."""
    folder.mkdir(parents=True, exist_ok=True)
    good_png = encode(Image.fromarray(gradient(128, 128, seed=1)))
    good_jpg = encode(Image.fromarray(gradient(128, 128, seed=2)), "JPEG")
    cases = {
        "zero.png": (b"", "empty"),
        "notes.txt": (b"these are my notes\n", "not an image"),
        "fake.jpg": (b"<html>not really a jpeg</html>", "not an image"),
        "truncated.png": (good_png[: len(good_png) // 3], "unreadable"),
        "truncated.jpg": (good_jpg[: len(good_jpg) // 3], "unreadable"),
        "tiny.png": (encode(Image.new("RGB", (1, 1), "red")), "too small"),
        "bomb.png": (png_header_claiming(50_000, 50_000), "too large"),
    }
    for name, (data, _) in cases.items():
        (folder / name).write_bytes(data)
    return {name: fragment for name, (_, fragment) in cases.items()}
