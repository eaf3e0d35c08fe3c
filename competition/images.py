"""Decode any image file to RGB uint8, whatever its mode, extension or EXIF orientation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None  # competition images are trusted; huge ones are still images
# Where images are not trusted (`make predict` on new data), a decoded RGB copy of an image over this many pixels
# would be 300 MB or more: refused by name instead (MAX_PIXELS= raises it).
MAX_PIXELS = 100_000_000


class TooLarge(ValueError):
    """An image over the pixel limit, refused from its header before decoding."""


def header_problem(path: Path, max_pixels: int | None = None) -> str | None:
    """Cheap check (header only): why `path` is not a usable image, or None."""
    try:
        with Image.open(path) as im:
            w, h = im.size
        if w < 1 or h < 1:
            return f"empty image {w}x{h}"
        if max_pixels is not None and w * h > max_pixels:
            return too_large(w, h, max_pixels)
        return None
    except FileNotFoundError:
        return "missing file"
    except Exception as e:  # PIL raises several types for junk files
        return f"cannot read image: {type(e).__name__}: {e}"


def too_large(w: int, h: int, max_pixels: int) -> str:
    return f"image of {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} (MAX_PIXELS= raises it)"


def load_resized(path: Path, size: int, max_pixels: int | None = None) -> np.ndarray:
    """Decode and resize to size x size (aspect not kept: crops would cut objects out of multi-label scenes).
    With `max_pixels`, an image larger than that is refused (TooLarge) before it is decoded."""
    with Image.open(path) as im:
        if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
            raise TooLarge(too_large(*im.size, max_pixels))
        im.draft("RGB", (size, size))  # JPEG: decode at reduced scale, several times faster
        return np.asarray(rgb_image(im).resize((size, size), Image.BILINEAR))


def rgb_image(im: Image.Image) -> Image.Image:
    """Upright RGB. PIL sniffs the format from content, so a PNG saved as .jpg decodes too."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit integer) gray: PIL's convert("RGB") clips at 255, which whitens the image.
        # Scale the 16-bit range down instead (32-bit "I" from a 16-bit PNG holds the same range).
        values = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(values / 257.0, 0, 255).round().astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels become white, not whatever colour the alpha channel hid.
        im = im.convert("RGBA")
        canvas = Image.new("RGB", im.size, (255, 255, 255))
        canvas.paste(im, mask=im.getchannel("A"))
        im = canvas
    return im.convert("RGB")
