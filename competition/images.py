"""Decode any image file to RGB uint8, whatever its mode, extension or EXIF orientation; or an image of named
channels to H x W x channels uint8: one grayscale file per channel (HPA's <id>_red.png, _green, _blue, _yellow),
or one file holding them all (Planet's 4-band 16-bit GeoTIFFs, an RGBA PNG read as four channels).

An image's source (`reader.image_files`) is a path, a tuple of paths (its channels' files) or Planes (one file of
several channels)."""
from __future__ import annotations

import dataclasses
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
TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, either byte order


@dataclasses.dataclass(frozen=True)
class Planes:
    """One file holding an image's `channels` channels in the spec's order: a TIFF of any number of samples
    (tifffile: Pillow reads neither 16-bit multi-sample nor planar TIFFs), any other format through Pillow, its
    bands as stored (an RGBA PNG is four channels, its alpha not composited)."""
    path: Path
    channels: int

    @property
    def name(self) -> str:
        return self.path.name


def header_problem(source, max_pixels: int | None = None) -> str | None:
    """Cheap check (header only): why `source` is not a usable image, or None."""
    if isinstance(source, tuple):
        return channels_problem(source, max_pixels)
    if isinstance(source, Planes):
        return planes_problem(source, max_pixels)
    path = source
    try:
        with Image.open(path) as im:
            return size_problem(*im.size, max_pixels)
    except FileNotFoundError:
        return "missing file"
    except Exception as e:  # PIL raises several types for junk files
        return f"cannot read image: {type(e).__name__}: {e}"


def source_name(source) -> str:
    """An image's file name, or its channel files' first name and how many there are, for messages."""
    return f"{source[0].name} (+{len(source) - 1} channel files)" if isinstance(source, tuple) else source.name


def source_files(source) -> tuple[Path, ...]:
    """The files an image is read from."""
    if isinstance(source, tuple):
        return source
    return (source.path,) if isinstance(source, Planes) else (source,)


def too_large(w: int, h: int, max_pixels: int) -> str:
    return f"image of {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} (MAX_PIXELS= raises it)"


def channels_problem(paths: tuple, max_pixels: int | None) -> str | None:
    """Every channel file readable, one channel each, of one size and one bit depth (each header read once)."""
    headers = []
    for p in paths:
        try:
            with Image.open(p) as im:
                headers.append((Path(p).name, im.size, im.mode))
        except FileNotFoundError:
            return f"{Path(p).name}: missing file"
        except Exception as e:  # PIL raises several types for junk files
            return f"{Path(p).name}: cannot read image: {type(e).__name__}: {e}"
        problem = size_problem(*im.size, max_pixels)
        if problem:
            return f"{Path(p).name}: {problem}"
    many = [f"{name} ({mode})" for name, _, mode in headers if mode not in ONE_CHANNEL]
    if many:
        return f"channel files hold one channel each: {', '.join(many)} hold{'s' if len(many) == 1 else ''} more"
    if len({size for _, size, _ in headers}) > 1:
        return "channels of different sizes: " + ", ".join(f"{n} {w}x{h}" for n, (w, h), _ in headers)
    if len({mode in SIXTEEN_BIT for _, _, mode in headers}) > 1:
        return "8-bit and 16-bit channels mixed: " + ", ".join(f"{n} {m}" for n, _, m in headers)
    return None


def size_problem(w: int, h: int, max_pixels: int | None) -> str | None:
    if w < 1 or h < 1:
        return f"empty image {w}x{h}"
    return too_large(w, h, max_pixels) if max_pixels is not None and w * h > max_pixels else None


def is_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in TIFF_MAGIC


def planes_header(path: Path) -> tuple[int, int, int, str]:
    """(width, height, channels, what) of a one-file image, from its header; `what` names its layout."""
    if is_tiff(path):
        import tifffile  # only where TIFFs are read
        with tifffile.TiffFile(path) as tif:
            return tiff_header(tif.series[0])
    with Image.open(path) as im:
        return pillow_header(im)


def tiff_header(series) -> tuple[int, int, int, str]:
    shape, axes = series.shape, series.axes
    planes = [n for n, a in zip(shape, axes) if a not in "YX"]
    if "Y" not in axes or "X" not in axes or len(planes) > 1:
        raise ValueError(f"a TIFF of axes {axes} {shape}: one image of height, width and channels expected")
    if series.dtype.kind not in "ui" or series.dtype.itemsize > 2:
        raise ValueError(f"a TIFF of {series.dtype} pixels: bands of 8- or 16-bit integers expected")
    return shape[axes.index("X")], shape[axes.index("Y")], planes[0] if planes else 1, f"TIFF {axes} {series.dtype}"


def pillow_header(im: Image.Image) -> tuple[int, int, int, str]:
    return im.size[0], im.size[1], len(im.getbands()), f"{im.format} {im.mode}"


def planes_problem(source: Planes, max_pixels: int | None) -> str | None:
    """The file readable and holding exactly the spec's channels."""
    try:
        header = planes_header(source.path)
    except FileNotFoundError:
        return "missing file"
    except Exception as e:  # PIL and tifffile raise several types for junk files
        return f"cannot read image: {type(e).__name__}: {e}"
    return planes_mismatch(source, header) or size_problem(header[0], header[1], max_pixels)


def planes_mismatch(source: Planes, header: tuple) -> str | None:
    _, _, channels, what = header
    if channels == source.channels:
        return None
    return f"{source.name} holds {channels} channel{'s' if channels != 1 else ''} ({what}), the spec lists " \
           f"{source.channels}"


def check_planes(source: Planes, header: tuple, max_pixels: int | None) -> None:
    """Before decoding: the spec's channels (ValueError), within the pixel limit (TooLarge)."""
    problem = planes_mismatch(source, header)
    if problem:
        raise ValueError(problem)
    if max_pixels is not None and header[0] * header[1] > max_pixels:
        raise TooLarge(f"{source.name}: {too_large(header[0], header[1], max_pixels)}")


def load_planes(source: Planes, size: int, max_pixels: int | None = None) -> np.ndarray:
    """size x size x channels uint8 from one file, opened once: each plane 16-bit scaled down as `gray_image`
    scales it, and resized alone, as channel files are."""
    if is_tiff(source.path):
        import tifffile
        with tifffile.TiffFile(source.path) as tif:
            series = tif.series[0]
            header = tiff_header(series)
            check_planes(source, header, max_pixels)
            values = np.moveaxis(series.asarray(), [series.axes.index("Y"), series.axes.index("X")], [0, 1])
        values = values.reshape(header[1], header[0], -1)
    else:
        with Image.open(source.path) as im:
            check_planes(source, pillow_header(im), max_pixels)
            im.draft(im.mode, (size, size))  # a JPEG decodes at reduced scale, as RGB ones do
            values = np.asarray(ImageOps.exif_transpose(im))
        values = values.reshape(*values.shape[:2], -1)
    planes = [Image.fromarray(as_uint8(values[..., c]), mode="L").resize((size, size), Image.BILINEAR)
              for c in range(values.shape[-1])]
    return np.stack([np.asarray(p) for p in planes], axis=-1)


def channel_moments(images: np.ndarray) -> tuple[tuple, tuple]:
    """Each channel's mean and standard deviation in [0, 1] over uint8 images (..., channels), a std of at least
    1e-3 (a blank channel): what a spec's channel_mean and channel_std hold, and what training measures."""
    pixels = np.asarray(images).reshape(-1, images.shape[-1]) / 255.0
    return tuple(map(float, pixels.mean(0))), tuple(float(max(v, 1e-3)) for v in pixels.std(0))


def as_uint8(plane: np.ndarray) -> np.ndarray:
    """One plane as 8-bit: wider integers scaled by 1/257 (65,535 -> 255), rounded and clipped."""
    if plane.dtype == np.uint8:
        return np.ascontiguousarray(plane)
    if plane.dtype.kind in "ui":
        return np.clip(plane.astype(np.float64) / 257.0, 0, 255).round().astype(np.uint8)
    raise ValueError(f"{plane.dtype} pixels: integer channels of 8 or 16 bits expected")


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
        return Image.fromarray(as_uint8(np.asarray(im)), mode="L")
    return im.convert("L")


def load_resized(source, size: int, max_pixels: int | None = None) -> np.ndarray:
    """Decode and resize to size x size (aspect not kept: crops would cut objects out of multi-label scenes):
    RGB, or a tuple of channel files' channels. With `max_pixels`, an image larger than that is refused
    (TooLarge) before it is decoded."""
    if isinstance(source, tuple):
        return load_channels(source, size, max_pixels)
    if isinstance(source, Planes):
        return load_planes(source, size, max_pixels)
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
