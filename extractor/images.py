"""Image bytes -> pixels: the one decoding path shared by `extract`, the service and the API.

Training-time and serving-time features cannot drift because all of them decode with
`decode_image` (through `extractor.pipeline`) and nowhere else; the float input VGG16 expects
is made from these pixels by `extractor.vgg16.preprocess`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

#: Largest image header accepted, in pixels: Pillow's own decompression-bomb threshold
#: (~89.5 MP). A header claiming more is refused before any pixel is decoded. `decode_image`'s
#: `max_pixels` sets a lower limit on the pixels actually decoded (the service's setting).
MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485

#: Smallest side accepted. Upscaling a 1x1 or 3x3 image to 150x150 yields a flat colour that
#: the backbone would happily turn into confident nonsense, so such files are refused.
MIN_SIDE = 8


class ImageError(ValueError):
    """The bytes are not an image this product can use; the message says why."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than `MAX_PIXELS` (a possible decompression bomb), or more
    than the caller's `max_pixels`."""


def decode_image(data: bytes, size: int, *, max_pixels: int = MAX_PIXELS) -> NDArray[np.uint8]:
    """Decode image bytes into a (size, size, 3) uint8 RGB array.

    Applies the EXIF orientation, converts any mode (grayscale, palette, RGBA, CMYK, 16-bit) to
    8-bit RGB, and resizes with bilinear filtering to a square, ignoring the aspect ratio as
    Keras's image-folder loaders do. JPEGs are decoded at a reduced DCT scale when that still
    leaves at least `size` pixels on each side (Pillow's draft mode): faster, same geometry.

    Memory: a header claiming more than `MAX_PIXELS` is refused before decoding; so is an image
    that would decode to more than `max_pixels` (for a JPEG, counted after the draft-mode
    reduction). While decoding, memory peaks at about 8 bytes per decoded pixel at most (RGBA,
    CMYK, or an EXIF-rotated RGB image); 1 for 8-bit grayscale, 3 for 16-bit grayscale, 4 for
    RGB, 5 for palette images, plus a ~10 MB strip of work for the 16-bit and palette paths.
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
            if im.width * im.height > max_pixels:
                at = "" if im.size == (width, height) else f", decoded at {im.width}x{im.height}"
                raise ImageTooLargeError(
                    f"image too large: {width}x{height} pixels{at} exceeds the limit of "
                    f"{max_pixels} pixels"
                )
            # In place: no copy of the full image unless it really has to be turned.
            ImageOps.exif_transpose(im, in_place=True)
            pixels = _to_8bit(im)
            resized = pixels.resize((size, size), Image.Resampling.BILINEAR)
            # Grayscale is resized as one band and only then made RGB: the same pixels as
            # resizing three equal bands (Pillow resamples each 8-bit band alike), 1/4 the memory.
            return np.asarray(resized.convert("RGB"), dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"unreadable image: {exc}") from None


#: Pixels converted at a time on the strip-wise paths: ~10 MB of float64 work per strip, so
#: converting a 16-bit or palette image needs little more than the image and its result.
_STRIP_PIXELS = 1 << 18


def _to_8bit(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit "L" or "RGB". Alpha is dropped, as Keras's loaders drop it.

    Every conversion is per pixel, so doing it strip by strip gives the same pixels as doing it
    at once; the strip-wise paths are the ones whose one-shot conversion would need several
    times the decoded image's memory.
    """
    if im.mode in ("RGB", "L"):
        return im
    if im.mode in ("1", "LA"):
        return im.convert("L")
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return _wide_to_gray(im)
    if im.mode == "P":
        return _palette_to_rgb(im)
    return im.convert("RGB")


def _strips(im: Image.Image) -> Iterator[tuple[int, int, Image.Image]]:
    """(top, bottom, rows top..bottom as an image), covering `im` top to bottom."""
    rows = max(1, _STRIP_PIXELS // im.width)
    for top in range(0, im.height, rows):
        bottom = min(top + rows, im.height)
        yield top, bottom, im.crop((0, top, im.width, bottom))


def _palette_to_rgb(im: Image.Image) -> Image.Image:
    """Palette -> RGB, 1 byte per pixel in and 4 out, rather than 1 + 4 + 4 through RGBA."""
    out = Image.new("RGB", im.size)
    # Pillow wants palette transparency expanded through RGBA before dropping it.
    via_rgba = "transparency" in im.info
    for top, _, strip in _strips(im):
        out.paste((strip.convert("RGBA") if via_rgba else strip).convert("RGB"), (0, top))
    return out


def _wide_to_gray(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale -> 8-bit, scaled rather than clipped.

    The conversion runs in float64 strip by strip, into one uint8 array: the whole image in
    float64 at once cost ~31 bytes per pixel (2.8 GB for a 175 KB 9,400x9,400 16-bit PNG).
    """
    if im.mode == "F":
        # fmax skips NaN as nanmax does, without nanmax's warning for a strip of only NaN.
        peak = np.fmax.reduce([np.fmax.reduce(np.asarray(s), axis=None) for *_, s in _strips(im)])
        scale = 255.0 if peak <= 1.0 else 1.0
    elif im.mode.startswith("I;16") or max(int(np.asarray(s).max()) for *_, s in _strips(im)) > 255:
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    gray = np.empty((im.height, im.width), dtype=np.uint8)
    for top, bottom, strip in _strips(im):
        arr = np.asarray(strip, dtype=np.float64)
        gray[top:bottom] = np.clip(np.nan_to_num(arr * scale), 0, 255).round()
    return Image.fromarray(gray)

