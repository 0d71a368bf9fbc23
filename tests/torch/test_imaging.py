"""Image decoding limits and ImageNet preprocessing (equal to torchvision's reference transforms)."""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np
import pytest

from tests.torch.helpers import encode, pattern_image, require_torch

require_torch()
pytestmark = pytest.mark.torch

from PIL import Image  # noqa: E402
from torchvision import transforms as T  # noqa: E402
from torchvision.models import ResNet152_Weights  # noqa: E402

from scoring_runtime.flavours.errors import BadRequest, UnsupportedMediaType  # noqa: E402
from scoring_runtime.imaging import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_RESIZED_PIXELS,
    ImageLimits,
    ImageTooLarge,
    Preprocess,
    b64decode,
    decode_image,
    image_to_input,
    preprocess,
)


@pytest.mark.parametrize("size", [(320, 240), (241, 517), (256, 256), (1001, 300)])
def test_preprocess_equals_classic_torchvision_transform(size: tuple[int, int]) -> None:
    img = pattern_image(*size, seed=size[0] % 5)
    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    expected = reference(img).numpy()
    got = preprocess(img, Preprocess())
    assert got.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_preprocess_equals_resnet152_v2_weights_transform_with_its_resize() -> None:
    img = pattern_image(400, 300, seed=3)
    expected = ResNet152_Weights.IMAGENET1K_V2.transforms()(img).numpy()  # resize 232, crop 224
    got = preprocess(img, Preprocess(resize=232))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # and the classic 256 resize is really a different input for these weights
    assert np.abs(preprocess(img, Preprocess()) - expected).max() > 0.05


def test_decode_converts_to_rgb_and_applies_exif_rotation() -> None:
    img = pattern_image(60, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated = decode_image(encode(img, "JPEG", exif=exif.tobytes()), ImageLimits())
    assert rotated.size == (40, 60)
    gray = decode_image(encode(img.convert("L"), "PNG"), ImageLimits())
    rgba = decode_image(encode(img.convert("RGBA"), "PNG"), ImageLimits())
    assert gray.mode == rgba.mode == "RGB"


def test_decode_rejects_corrupt_non_image_and_oversized_input() -> None:
    good = encode(pattern_image(64, 64), "JPEG")
    with pytest.raises(BadRequest, match="not a valid JPEG, PNG or WEBP") as bad:
        decode_image(b"%PDF-1.4 definitely not an image", ImageLimits())
    assert bad.value.status == 400
    with pytest.raises(UnsupportedMediaType, match="a GIF image; send JPEG, PNG or WEBP"):
        decode_image(encode(pattern_image(16, 16), "GIF"), ImageLimits())  # a real image, but not accepted
    with pytest.raises(UnsupportedMediaType, match="BMP"):
        decode_image(encode(pattern_image(16, 16), "BMP"), ImageLimits())
    with pytest.raises(BadRequest, match="could not be decoded"):
        decode_image(good[: len(good) // 2], ImageLimits())  # truncated
    with pytest.raises(BadRequest, match="empty"):
        decode_image(b"", ImageLimits())
    with pytest.raises(ImageTooLarge, match="over the limit of 1000") as e:
        decode_image(good, ImageLimits(max_bytes=1000))
    assert e.value.status == 413
    with pytest.raises(ImageTooLarge, match="64x64 = 4096 pixels"):
        decode_image(good, ImageLimits(max_pixels=4000))


def _strip(width: int, height: int) -> Image.Image:
    """A thin strip: red rises and green falls along its long side, blue is constant."""
    t = np.linspace(0, 255, max(width, height))
    line = np.stack([t, 255 - t, np.full_like(t, 64)], axis=-1)
    arr = np.repeat(line[None], min(width, height), axis=0)
    if height > width:
        arr = arr.transpose(1, 0, 2)
    return Image.fromarray(np.round(arr).astype(np.uint8), "RGB")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("size", [(16_000, 2), (2, 16_000)])
def test_extreme_aspect_ratio_is_preprocessed_without_a_huge_intermediate_image(
    size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    requested: list[tuple[int, int]] = []
    real_resize = Image.Image.resize

    def watched(self: Image.Image, new_size: tuple[int, int], *args: object, **kwargs: object) -> Image.Image:
        requested.append((int(new_size[0]), int(new_size[1])))
        # the full shorter-side resize of 16000 x 2 would be 2,048,000 x 256 (1.5 GB): refuse before allocating
        assert new_size[0] * new_size[1] <= MAX_RESIZED_PIXELS, f"resize to {new_size}"
        return real_resize(self, new_size, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "resize", watched)
    png = encode(_strip(*size), "PNG")
    assert len(png) < 100_000  # a small upload
    got = image_to_input(png, Preprocess(), ImageLimits())
    assert got.shape == (3, 224, 224) and np.isfinite(got).all()
    assert requested and max(w * h for w, h in requested) <= MAX_RESIZED_PIXELS
    # the centre crop covers the middle of the strip: red and green about half way, blue constant
    rgb = (got * np.asarray(IMAGENET_STD)[:, None, None] + np.asarray(IMAGENET_MEAN)[:, None, None]) * 255
    np.testing.assert_allclose(rgb.mean(axis=(1, 2)), [127.5, 127.5, 64], atol=1.5)


def test_very_wide_images_stay_close_to_the_torchvision_transform() -> None:
    img = pattern_image(2000, 30, seed=2)  # shorter-side resize: 17066 x 256, over MAX_RESIZED_PIXELS
    assert MAX_RESIZED_PIXELS < 17066 * 256
    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    diff = np.abs(preprocess(img, Preprocess()) - reference(img).numpy())
    one_level = 1 / 255 / min(IMAGENET_STD)
    assert diff.max() <= 4 * one_level + 1e-5
    assert diff.mean() <= 0.5 * one_level


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is a few bytes: a bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.timeout(10)
def test_decompression_bomb_is_rejected_from_the_header_without_decoding() -> None:
    bomb = _png_header_only(60_000, 60_000)  # 3.6 gigapixels, ~100 bytes
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_image(bomb, ImageLimits())
    with pytest.raises(ImageTooLarge, match="10000x5000"):
        decode_image(_png_header_only(10_000, 5_000), ImageLimits())  # under Pillow's own bomb limit


def test_base64_is_strict_and_accepts_data_urls() -> None:
    raw = bytes(range(256))
    text = base64.b64encode(raw).decode()
    assert b64decode(text, "image") == raw
    assert b64decode(text.rstrip("="), "image") == raw
    assert b64decode("data:image/png;base64," + text, "image") == raw
    with pytest.raises(BadRequest, match="not valid base64"):
        b64decode("not base64 at all!", "image")
    with pytest.raises(BadRequest, match="must be a base64 string"):
        b64decode(123, "images[1]")


def test_preprocess_config_from_manifest_is_validated() -> None:
    p = Preprocess.from_flavour({"preprocess": {"resize": 232, "crop": 224, "mean": [0.5, 0.5, 0.5]}})
    assert p.resize == 232 and p.mean == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="crop"):
        Preprocess(resize=200, crop=224)
    with pytest.raises(ValueError, match="unknown keys"):
        Preprocess.from_flavour({"preprocess": {"size": 3}})
