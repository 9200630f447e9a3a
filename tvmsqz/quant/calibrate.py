"""Calibration inputs for post-training quantisation.

Default: the bundled real photos (`tvmsqz.images.sample_images`), mirrored left-right, so that
the evaluation views (the photos as they are, which `bench` compares against fp32) are not the
calibration views. Or the user's: preprocessed (1, 3, H, W) float32 arrays, or uint8 HxWx3
photos (optionally `(name, photo)` pairs) preprocessed with the model's convention.
"""

from __future__ import annotations

import numpy as np


def default_calibration(convention: str, size: int) -> list:
    """The bundled photos, mirrored, preprocessed with `convention` at `size` x `size`."""
    from tvmsqz.images import preprocess, sample_images

    return [preprocess(np.ascontiguousarray(img[:, ::-1]), convention, size) for _, img in sample_images()]


def calibration_inputs(images, convention: str, size: int) -> list:
    """(1, 3, size, size) float32 calibration inputs from `images` (None: `default_calibration`)."""
    if images is None:
        return default_calibration(convention, size)
    from tvmsqz.images import preprocess

    out = []
    for im in images:
        if isinstance(im, tuple):
            im = im[1]
        im = np.asarray(im)
        if im.ndim == 3 and im.shape[-1] == 3 and im.dtype == np.uint8:
            im = preprocess(im, convention, size)
        out.append(np.asarray(im, dtype=np.float32).reshape(1, 3, size, size))
    return out


#: Image files a calibration folder may hold.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_calibration(path, convention: str, size: int) -> tuple[list, str]:
    """(calibration inputs, a description for the manifest) from what `--calibrate` names.

    None: the built-in photos, mirrored (`default_calibration`). A folder: every .jpg/.jpeg/.png
    in it (sorted), read with Pillow and preprocessed with the model's `convention`. A .npy: one
    (N, 3, size, size), (1, 3, size, size) or (3, size, size) array; a .npz: every array in it,
    each of those shapes. Anything else, an empty folder, an unreadable image, a wrong shape or
    dtype, NaN or inf: one `TvmsqzError` line naming the path."""
    from pathlib import Path

    from tvmsqz.errors import TvmsqzError

    if path is None:
        inputs = default_calibration(convention, size)
        return inputs, f"built-in sample photos, mirrored ({len(inputs)})"
    path = Path(path)
    if not path.exists():
        raise TvmsqzError(f"--calibrate {path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise TvmsqzError(f"--calibrate {path}: the folder holds no .jpg/.jpeg/.png image")
        from PIL import Image, UnidentifiedImageError

        from tvmsqz.images import preprocess

        inputs = []
        for file in files:
            try:
                with Image.open(file) as im:
                    img = np.asarray(im.convert("RGB"))
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise TvmsqzError(f"--calibrate {path}: cannot read image {file.name}: {exc}") from None
            inputs.append(preprocess(img, convention, size))
        return inputs, f"{len(inputs)} images from {path}"
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise TvmsqzError(
            f"--calibrate {path}: expected a folder of images, a .npy or a .npz, not a {suffix or 'file'}"
        )
    try:
        if suffix == ".npy":
            arrays = [np.load(path, allow_pickle=False)]
        else:
            with np.load(path, allow_pickle=False) as data:
                arrays = [data[k] for k in data.files]
    except (OSError, ValueError, EOFError) as exc:
        raise TvmsqzError(f"--calibrate {path}: cannot read it as {suffix}: {str(exc).splitlines()[0]}") from None
    if not arrays:
        raise TvmsqzError(f"--calibrate {path}: the archive holds no array")
    inputs = []
    for arr in arrays:
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise TvmsqzError(f"--calibrate {path}: arrays must be numeric, got {arr.dtype}")
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or tuple(arr.shape[1:]) != (3, size, size):
            raise TvmsqzError(
                f"--calibrate {path}: expected arrays of shape (N, 3, {size}, {size}) or (3, {size}, {size}), "
                f"got {tuple(arr.shape)}"
            )
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise TvmsqzError(f"--calibrate {path}: the arrays hold NaN or infinite values")
        inputs.extend(arr[i : i + 1] for i in range(arr.shape[0]))
    if not inputs:
        raise TvmsqzError(f"--calibrate {path}: no input in it (N = 0)")
    return inputs, f"{len(inputs)} inputs from {path}"
