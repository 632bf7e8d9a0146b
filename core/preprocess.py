"""A declared `preprocess` of an image folder: resize the shorter side, then take the central window.

Applied once when a dataset is stored, to each decoded 8-bit image (L or RGB):
`resize` R scales the shorter side to R and the longer to R·long // short (integer
arithmetic) with Pillow's bilinear filter; `center_crop` (h, w) then keeps the window
whose top-left corner is (round((H − h) / 2), round((W − w) / 2)), Python's round
(half to even), as torchvision does. An image smaller than the crop is refused, never padded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from core.dataset_arrays import DatasetError

MAX_SIDE = 4096


@dataclass(frozen=True)
class Preprocess:
    resize: int | None = None
    crop: tuple[int, int] | None = None  # (h, w)

    def __bool__(self) -> bool:
        return self.resize is not None or self.crop is not None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.resize is not None:
            body["resize"] = self.resize
        if self.crop is not None:
            body["center_crop"] = list(self.crop)
        return body


def _side(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
        raise DatasetError(f"preprocess.{field} must be an integer from 1 to {MAX_SIDE}, got {value!r}")
    return value


def parse_preprocess(value: Any) -> Preprocess | None:
    """`{"resize": R, "center_crop": C}` (either or both; C an int or [h, w]); a DatasetError says what is wrong."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise DatasetError('preprocess must be an object such as {"resize": 256, "center_crop": 224}')
    unknown = sorted(set(value) - {"resize", "center_crop"})
    if unknown:
        raise DatasetError(f"preprocess has unknown keys {unknown}; it takes 'resize' and 'center_crop'")
    resize = _side(value["resize"], "resize") if "resize" in value else None
    crop = value.get("center_crop")
    if crop is None:
        return Preprocess(resize, None)
    if isinstance(crop, list) and len(crop) == 2:
        return Preprocess(resize, (_side(crop[0], "center_crop[0]"), _side(crop[1], "center_crop[1]")))
    side = _side(crop, "center_crop")
    return Preprocess(resize, (side, side))


def resized_size(resize: int, width: int, height: int) -> tuple[int, int]:
    """(w', h'): the shorter side becomes `resize`, the longer `resize·long // short`."""
    if width <= height:
        return resize, resize * height // width
    return resize * width // height, resize


def output_size(preprocess: Preprocess | None, width: int, height: int) -> tuple[int, int]:
    """(w, h) an image of this size is stored at."""
    if preprocess is None:
        return width, height
    if preprocess.resize is not None:
        width, height = resized_size(preprocess.resize, width, height)
    if preprocess.crop is not None:
        height, width = preprocess.crop
    return width, height


def check_crop(preprocess: Preprocess | None, width: int, height: int, name: str) -> None:
    """Raise DatasetError, naming the file, when a `width`×`height` image is smaller than the crop once resized."""
    if not preprocess or preprocess.crop is None:
        return
    if preprocess.resize is not None:
        width, height = resized_size(preprocess.resize, width, height)
    crop_h, crop_w = preprocess.crop
    if width < crop_w or height < crop_h:
        raise DatasetError(f"'{name}' is {width}×{height} pixels after resizing, smaller than the "
                           f"center_crop of {crop_w}×{crop_h} (width×height); images are never padded")


def apply_preprocess(image: Image.Image, preprocess: Preprocess | None, name: str) -> Image.Image:
    """The image as stored: resized, then centre-cropped, as declared."""
    if not preprocess:
        return image
    check_crop(preprocess, *image.size, name)
    if preprocess.resize is not None:
        image = image.resize(resized_size(preprocess.resize, *image.size), Image.BILINEAR)
    if preprocess.crop is not None:
        crop_h, crop_w = preprocess.crop
        width, height = image.size
        top, left = round((height - crop_h) / 2), round((width - crop_w) / 2)
        image = image.crop((left, top, left + crop_w, top + crop_h))
    return image
