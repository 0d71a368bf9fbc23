"""Image decoding and ImageNet-style preprocessing, safe against hostile input.

Runs in the server's parse threads (Pillow releases the GIL while decoding), never on the event
loop. The size of an image is checked from its header *before* its pixels are decoded, so a
small file claiming 100,000 x 100,000 pixels (a decompression bomb) costs nothing.

The preprocessing matches torchvision's classic ImageNet evaluation transform exactly (the same
Pillow resize underneath): Resize(resize) on the shorter side, CenterCrop(crop), scale to [0, 1],
Normalize(mean, std); the result is float32, channels first (3, crop, crop). Only for extreme
aspect ratios (a resized image over MAX_RESIZED_PIXELS) is the crop's region resized on its own,
so a tiny 16000 x 2 strip never becomes a multi-gigabyte intermediate image.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from scoring_runtime.flavours.errors import BadRequest, UnsupportedMediaType

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Pillow format name per accepted content type (anything else on /score is a 415).
CONTENT_TYPES = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
FORMATS = ("JPEG", "PNG", "WEBP")
#: above this many pixels after the shorter-side resize, only the centre crop's region is resized
MAX_RESIZED_PIXELS = 4_000_000
_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


class ImageTooLarge(BadRequest):
    """The image file or its pixel count is over the limit."""

    status = 413


@dataclass(frozen=True)
class ImageLimits:
    """Per-image limits: encoded size and decoded pixel count (width x height)."""

    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 40_000_000  # e.g. 8000 x 5000; below Pillow's own bomb warning (~89 MP)

    @classmethod
    def from_flavour(cls, flavour: dict[str, Any]) -> ImageLimits:
        raw = flavour.get("limits") or {}
        limits = cls(
            max_bytes=int(raw.get("max_image_bytes", cls.max_bytes)),
            max_pixels=int(raw.get("max_image_pixels", cls.max_pixels)),
        )
        if limits.max_bytes < 1 or limits.max_pixels < 1:
            raise ValueError(f"flavour.limits must be positive, got {raw}")
        return limits


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input; stored in the manifest as `flavour.preprocess`."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if not 1 <= self.crop <= self.resize:
            raise ValueError(f"preprocess: need 1 <= crop ({self.crop}) <= resize ({self.resize})")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError("preprocess: mean and std need 3 values each (RGB), std > 0")
        if self.interpolation not in _INTERPOLATION:
            raise ValueError(
                f"preprocess: unknown interpolation {self.interpolation!r}; use one of {', '.join(_INTERPOLATION)}"
            )

    @classmethod
    def from_flavour(cls, flavour: dict[str, Any]) -> Preprocess:
        raw = dict(flavour.get("preprocess") or {})
        unknown = set(raw) - {"resize", "crop", "mean", "std", "interpolation"}
        if unknown:
            raise ValueError(f"flavour.preprocess: unknown keys {sorted(unknown)}")
        for key in ("mean", "std"):
            if key in raw:
                raw[key] = tuple(float(x) for x in raw[key])
        return cls(**raw)

    def to_flavour(self) -> dict[str, Any]:
        return {"resize": self.resize, "crop": self.crop, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.crop, self.crop)


#: magic bytes of image formats we recognise but do not accept (a 415 names them; garbage is a 400)
_OTHER_FORMATS = ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
                  (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\x00\x00\x01\x00", "ICO"), (b"8BPS", "PSD"))


def _other_format(data: bytes) -> str | None:
    for magic, name in _OTHER_FORMATS:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"avif"):
        return "HEIF/AVIF"
    return None


def decode_image(data: bytes, limits: ImageLimits, what: str = "image") -> Image.Image:
    """Decode JPEG/PNG/WEBP bytes to an RGB image, enforcing `limits`; BadRequest on anything else."""
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(
            f"{what} is {len(data)} bytes, over the limit of {limits.max_bytes}; resize or recompress it"
        )
    if not data:
        raise BadRequest(f"{what} is empty; send the bytes of a JPEG, PNG or WEBP file")
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except UnidentifiedImageError:
        if other := _other_format(data):
            raise UnsupportedMediaType(f"{what} is a {other} image; send JPEG, PNG or WEBP") from None
        raise BadRequest(
            f"{what} is not a valid JPEG, PNG or WEBP image (corrupt, truncated or not an image at all)"
        ) from None
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{what} has too many pixels (limit {limits.max_pixels})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:  # a damaged header
        raise BadRequest(f"{what} is not a valid JPEG, PNG or WEBP image ({e})") from None
    with img:
        w, h = img.size
        if w * h > limits.max_pixels:
            raise ImageTooLarge(
                f"{what} is {w}x{h} = {w * h} pixels, over the limit of {limits.max_pixels}; downscale it first"
            )
        frames = int(getattr(img, "n_frames", 1))
        if frames > 1:
            raise BadRequest(f"{what} is animated ({frames} frames); send a single still image")
        try:
            img.load()
            # Cameras store rotation in EXIF; apply it so a portrait photo is classified upright.
            rgb = ImageOps.exif_transpose(img).convert("RGB")
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as e:
            raise BadRequest(f"{what} could not be decoded ({img.format}): {e}") from None
    return rgb


def _resize_and_crop(img: Image.Image, p: Preprocess) -> Image.Image:
    """Resize the shorter side to `p.resize`, then take the centre `p.crop` square.

    Resizing the whole image and cropping afterwards is exactly torchvision's transform, and it is
    what runs for ordinary shapes. An extreme aspect ratio (a 16000 x 2 strip) would blow the resized
    image up to gigabytes, so there only the source region under the centre crop is resized (Pillow's
    `box`): same geometry and filter, a few levels of 255 off the full resize (bilinear, bicubic).
    """
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = p.resize, int(p.resize * long / short)
    nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    top = round((nh - p.crop) / 2.0)
    left = round((nw - p.crop) / 2.0)
    resample = _INTERPOLATION[p.interpolation]
    if nw * nh > MAX_RESIZED_PIXELS:
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + p.crop) * sx, (top + p.crop) * sy)
        return img.resize((p.crop, p.crop), resample, box=box)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample)
    return img.crop((left, top, left + p.crop, top + p.crop))


def preprocess(img: Image.Image, p: Preprocess) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Resize shorter side, centre crop, scale and normalise: float32 (3, crop, crop)."""
    img = _resize_and_crop(img, p)
    arr: np.ndarray[Any, np.dtype[np.float32]] = np.asarray(img, dtype=np.float32)
    arr /= np.float32(255.0)
    arr -= np.asarray(p.mean, dtype=np.float32)
    arr /= np.asarray(p.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def image_to_input(data: bytes, p: Preprocess, limits: ImageLimits, what: str = "image") -> np.ndarray[Any, Any]:
    """Encoded image bytes -> one preprocessed model input (3, crop, crop)."""
    return preprocess(decode_image(data, limits, what), p)


def b64decode(text: Any, what: str) -> bytes:
    """Strict base64 (standard alphabet, padding optional; a data: URL prefix is accepted)."""
    if not isinstance(text, str):
        raise BadRequest(f"{what} must be a base64 string, got {type(text).__name__}")
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    text = text.strip()
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64 (standard alphabet A-Z a-z 0-9 + /)") from None
