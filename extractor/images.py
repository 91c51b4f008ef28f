"""Image bytes -> model input: the one preprocessing path shared by `extract` and the service.

Training-time and serving-time features cannot drift because both call `decode_image` and
`preprocess` from here and nowhere else.
"""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

#: Largest image accepted, in pixels: Pillow's own decompression-bomb threshold (~89.5 MP).
#: A header claiming more is refused before any pixel is decoded.
MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485

#: Smallest side accepted. Upscaling a 1x1 or 3x3 image to 150x150 yields a flat colour that
#: the backbone would happily turn into confident nonsense, so such files are refused.
MIN_SIDE = 8

#: ImageNet channel means in BGR order, as `keras.applications.vgg16.preprocess_input` subtracts.
IMAGENET_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)

#: Identifies this preprocessing in cache and head metadata; bump it whenever pixels could change.
PREPROCESSING_ID = "v1:pillow-exif-rgb,draft,bilinear-squash;vgg16-caffe-bgr-mean"


class ImageError(ValueError):
    """The bytes are not an image this product can use; the message says why."""


class ImageTooLargeError(ImageError):
    """The image claims more pixels than `MAX_PIXELS` (a possible decompression bomb)."""


def decode_image(data: bytes, size: int) -> NDArray[np.uint8]:
    """Decode image bytes into a (size, size, 3) uint8 RGB array.

    Applies the EXIF orientation, converts any mode (grayscale, palette, RGBA, CMYK, 16-bit) to
    8-bit RGB, and resizes with bilinear filtering to a square, ignoring the aspect ratio as
    Keras's image-folder loaders do. JPEGs are decoded at a reduced DCT scale when that still
    leaves at least `size` pixels on each side (Pillow's draft mode): faster, same geometry.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise ImageTooLargeError(
                    f"image too large: {width}x{height} pixels exceeds the limit of "
                    f"{MAX_PIXELS} (possible decompression bomb)"
                )
            if min(width, height) < MIN_SIDE:
                raise ImageError(
                    f"image too small: {width}x{height} pixels, need at least "
                    f"{MIN_SIDE} on each side"
                )
            im.draft("RGB", (size, size))
            oriented = ImageOps.exif_transpose(im)
            rgb = _to_rgb(oriented)
            resized = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(resized, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"unreadable image: {exc}") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Alpha is dropped, as Keras's loaders drop it."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return _wide_to_rgb(im)
    if im.mode == "P" and "transparency" in im.info:
        # Pillow wants palette transparency expanded through RGBA before dropping it.
        im = im.convert("RGBA")
    return im.convert("RGB")


def _wide_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale -> 8-bit RGB, scaled rather than clipped."""
    arr = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        scale = 255.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 1.0
    elif im.mode.startswith("I;16") or (arr.size and float(arr.max()) > 255):
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    gray = np.clip(np.nan_to_num(arr * scale), 0, 255).round().astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def preprocess(pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
    """(N, H, W, 3) uint8 RGB -> the float32 input VGG16's ImageNet weights expect.

    Equal to `keras.applications.vgg16.preprocess_input` ("caffe" mode: RGB -> BGR, ImageNet
    means subtracted, range 0..255), written in numpy so the decode path needs no TensorFlow.
    """
    return pixels[..., ::-1].astype(np.float32) - IMAGENET_BGR_MEAN
