"""Decode any image file to RGB uint8, whatever its mode, extension or EXIF orientation; or an image stored as one
grayscale file per channel (HPA's <id>_red.png, _green, _blue, _yellow) to H x W x channels uint8.

An image's source is a path, or a tuple of paths: its channels' files (`Spec.image_name`)."""
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


SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ONE_CHANNEL = ("L", "1", *SIXTEEN_BIT)


def header_problem(source, max_pixels: int | None = None) -> str | None:
    """Cheap check (header only): why `source` is not a usable image, or None."""
    if isinstance(source, tuple):
        return channels_problem(source, max_pixels)
    path = source
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


def source_name(source) -> str:
    """An image's file name, or its channel files' first name and how many there are, for messages."""
    return f"{source[0].name} (+{len(source) - 1} channel files)" if isinstance(source, tuple) else source.name


def too_large(w: int, h: int, max_pixels: int) -> str:
    return f"image of {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} (MAX_PIXELS= raises it)"


def channels_problem(paths: tuple, max_pixels: int | None) -> str | None:
    """Every channel file readable, one channel each, of one size and one bit depth."""
    headers = []
    for p in paths:
        problem = header_problem(Path(p), max_pixels)
        if problem:
            return f"{Path(p).name}: {problem}"
        with Image.open(p) as im:
            headers.append((Path(p).name, im.size, im.mode))
    many = [f"{name} ({mode})" for name, _, mode in headers if mode not in ONE_CHANNEL]
    if many:
        return f"channel files hold one channel each: {', '.join(many)} hold{'s' if len(many) == 1 else ''} more"
    if len({size for _, size, _ in headers}) > 1:
        return "channels of different sizes: " + ", ".join(f"{n} {w}x{h}" for n, (w, h), _ in headers)
    if len({mode in SIXTEEN_BIT for _, _, mode in headers}) > 1:
        return "8-bit and 16-bit channels mixed: " + ", ".join(f"{n} {m}" for n, _, m in headers)
    return None


def load_channels(paths: tuple, size: int, max_pixels: int | None = None) -> np.ndarray:
    """size x size x len(paths) uint8: each channel's file decoded to gray (16-bit scaled down as `rgb_image`
    scales it) and resized alone, as one RGB file's channels are."""
    problem = channels_problem(paths, None)
    if problem:
        raise ValueError(problem)
    planes = []
    for p in paths:
        with Image.open(p) as im:
            if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
                raise TooLarge(f"{Path(p).name}: {too_large(*im.size, max_pixels)}")
            im.draft("L", (size, size))
            planes.append(np.asarray(gray_image(im).resize((size, size), Image.BILINEAR)))
    return np.stack(planes, axis=-1)


def gray_image(im: Image.Image) -> Image.Image:
    """One channel as 8-bit gray (mode L)."""
    if im.mode in SIXTEEN_BIT:
        values = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(values / 257.0, 0, 255).round().astype(np.uint8), mode="L")
    return im.convert("L")


def load_resized(source, size: int, max_pixels: int | None = None) -> np.ndarray:
    """Decode and resize to size x size (aspect not kept: crops would cut objects out of multi-label scenes):
    RGB, or a tuple of channel files' channels. With `max_pixels`, an image larger than that is refused
    (TooLarge) before it is decoded."""
    if isinstance(source, tuple):
        return load_channels(source, size, max_pixels)
    path = source
    with Image.open(path) as im:
        if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
            raise TooLarge(too_large(*im.size, max_pixels))
        im.draft("RGB", (size, size))  # JPEG: decode at reduced scale, several times faster
        return np.asarray(rgb_image(im).resize((size, size), Image.BILINEAR))


def rgb_image(im: Image.Image) -> Image.Image:
    """Upright RGB. PIL sniffs the format from content, so a PNG saved as .jpg decodes too."""
    im = ImageOps.exif_transpose(im)
    if im.mode in SIXTEEN_BIT:
        # 16-bit (or 32-bit integer) gray: PIL's convert("RGB") clips at 255, which whitens the image.
        # Scale the 16-bit range down instead (32-bit "I" from a 16-bit PNG holds the same range).
        im = gray_image(im)
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels become white, not whatever colour the alpha channel hid.
        im = im.convert("RGBA")
        canvas = Image.new("RGB", im.size, (255, 255, 255))
        canvas.paste(im, mask=im.getchannel("A"))
        im = canvas
    return im.convert("RGB")
