"""Decoding image files into the dataset's mode and size, with clear errors for bad files."""

from __future__ import annotations

import io
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageChops, ImageOps, ImageStat, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from stablesdg.errors import UserError
from stablesdg.once import warn_once

log = logging.getLogger(__name__)


class BadImageError(UserError):
    """An image file that cannot be decoded (corrupt, truncated, not an image). ``advice`` says what to do about it."""

    advice = "fix or remove the file"


class TooManyPixelsError(BadImageError):
    """An image larger than Pillow decodes: it refuses more than twice ``Image.MAX_IMAGE_PIXELS`` pixels."""

    advice = "downscale it or cut it into tiles"


def decode_image(data: bytes, name: str | Path) -> Image.Image:
    """Fully decode image bytes; a ``BadImageError`` naming ``name`` if they are not a valid image, a
    ``TooManyPixelsError`` if it has more pixels than Pillow decodes. An image above Pillow's decompression-bomb
    warning size (``Image.MAX_IMAGE_PIXELS``) is decoded, and one warning line per file and process names it
    instead of Pillow's warning, which names no file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        _note_large(image, str(name))
        image.load()
    except UnidentifiedImageError as err:  # its message names the in-memory buffer, not the file
        raise BadImageError(f"{name}: cannot decode image (not an image format Pillow reads)") from err
    except Image.DecompressionBombError as err:
        raise TooManyPixelsError(f"{name}: {_too_many_pixels_in_words(str(err))}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"{name}: cannot decode image ({err})") from err
    return image


def read_image_file(path: str | Path) -> Image.Image:
    """The fully decoded image at ``path`` (``decode_image``); a one-line ``UserError`` that names the file and says
    what to do about it where it cannot be read or decoded."""
    try:
        return decode_image(Path(path).read_bytes(), path)
    except BadImageError as err:
        raise UserError(f"{err}; {err.advice}") from err
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from err


def _too_many_pixels_in_words(message: str) -> str:
    """Pillow's refusal "Image size (N pixels) exceeds limit of M pixels, ..." as "N pixels, more than the M that
    Pillow decodes ..."; any other message as it is."""
    match = re.match(r"Image size \((\d+) pixels\) exceeds limit of (\d+) pixels", message)
    if match is None:
        return message
    size, limit = (int(group) for group in match.groups())
    return f"{size:,} pixels, more than the {limit:,} that Pillow decodes (larger files may be decompression bombs)"


def _note_large(image: Image.Image, name: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit and width * height > limit:
        warn_once(log, "%s: %d × %d pixels (%s), more than the %s at which Pillow warns of a possible decompression "
                  "bomb; it is read all the same (at least %.1f GB decoded)", name, width, height,
                  f"{width * height:,}", f"{limit:,}", width * height * len(image.getbands()) / 1e9)


HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # Pillow's modes of 16-bit (and 32-bit integer) files
BIT_DEPTHS = (8, 10, 12, 14)  # the depths stored in 16-bit files (by cameras, or 8-bit data saved as 16-bit)


def high_bit_maximum(image: Image.Image) -> int | None:
    """The largest value of a 16-bit (or 32-bit integer) grayscale image; ``None`` for any other image."""
    return int(np.asarray(image).max(initial=0)) if image.mode in HIGH_BIT_MODES else None


def fewest_bits(maximum: int) -> int | None:
    """The smallest of ``BIT_DEPTHS`` that holds ``maximum``; ``None`` when it needs more than 14 bits."""
    return next((bits for bits in BIT_DEPTHS if maximum < 2 ** bits), None)


def high_bit_to_8bit(image: Image.Image, bit_depth: int = 16) -> Image.Image:
    """A 16-bit (or 32-bit integer) image whose values span 0 to 2**bit_depth - 1 as 8-bit grayscale (that range
    to 0-255, larger values to 255); any other image unchanged."""
    if image.mode not in HIGH_BIT_MODES:
        return image
    array = np.asarray(image, dtype=np.float64) * (255.0 / (2 ** bit_depth - 1))
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def _to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer (over the full 16-bit range) and float images scaled to 8-bit grayscale; palette and alpha
    dropped to RGB."""
    if image.mode in HIGH_BIT_MODES:
        return high_bit_to_8bit(image)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        if array.max(initial=0.0) <= 1.0:
            array = array * 255.0
        return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("L", "RGB"):
        return image
    return image.convert("RGBA").convert("RGB") if image.mode == "P" else image.convert("RGB")


COLOUR_MEAN_DIFFERENCE = 2.0  # mean |R-G| or |G-B| in 8-bit levels above which an image counts as colour


def has_colour(image: Image.Image) -> bool:
    """Whether ``image`` holds colour: its channels differ by more than ``COLOUR_MEAN_DIFFERENCE`` levels on
    average (a grey image stored as RGB, JPEG chroma noise included, does not count)."""
    image = _to_8bit(image)
    if image.mode == "L":
        return False
    image = image.convert("RGB")
    red, green, blue = image.reduce(max(1, min(image.size) // 50)).split()  # box-averaged: cheap, keeps the tint
    return any(ImageStat.Stat(ImageChops.difference(a, b)).mean[0] > COLOUR_MEAN_DIFFERENCE
               for a, b in ((red, green), (green, blue)))


SQUARE_ENOUGH = 0.9  # the share of an image a centre square keeps, below which the dataset says it crops


def square_share(width: int, height: int) -> float:
    """The share of a ``width``×``height`` image that its centre square keeps (1.0 for a square)."""
    return min(width, height) / max(width, height)


def conform_image(image: Image.Image, channels: int, size: int, fit: str = "crop") -> Image.Image:
    """Return ``image`` as ``channels`` (1 = L, 3 = RGB) at ``size``×``size``, upright.

    An image whose EXIF (or TIFF) orientation tag says it is stored rotated or mirrored is turned the way an image
    viewer shows it (``PIL.ImageOps.exif_transpose``), high-bit-depth images are scaled to 8 bits, palette/alpha
    images become RGB (alpha dropped), and a differently sized image is resized; one that is not square is made
    square as ``fit`` says:
    ``crop`` resizes its shorter side and keeps the centre (``PIL.ImageOps.fit``), ``pad`` resizes its longer side
    and pads the rest with black (``PIL.ImageOps.pad``), ``stretch`` resizes each side.
    """
    if channels not in (1, 3):
        raise UserError(f"dataset.channels must be 1 or 3, got {channels}")
    image = _to_8bit(ImageOps.exif_transpose(image)).convert("L" if channels == 1 else "RGB")
    if image.size == (size, size):
        return image
    if fit == "pad":
        return ImageOps.pad(image, (size, size), method=Image.Resampling.BICUBIC, color=0)
    if fit == "stretch":
        return image.resize((size, size), Image.Resampling.BICUBIC)
    return ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a float tensor ``C×H×W`` in ``[0, 1]``."""
    return TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
