"""Decode any image file to RGB uint8, whatever its mode, extension or EXIF orientation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None  # competition images are trusted; huge ones are still images


def header_problem(path: Path) -> str | None:
    """Cheap check (header only): why `path` is not a usable image, or None."""
    try:
        with Image.open(path) as im:
            w, h = im.size
        if w < 1 or h < 1:
            return f"empty image {w}x{h}"
        return None
    except FileNotFoundError:
        return "missing file"
    except Exception as e:  # PIL raises several types for junk files
        return f"cannot read image: {type(e).__name__}: {e}"


def load_resized(path: Path, size: int) -> np.ndarray:
    """Decode and resize to size x size (aspect not kept: crops would cut objects out of multi-label scenes)."""
    with Image.open(path) as im:
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
