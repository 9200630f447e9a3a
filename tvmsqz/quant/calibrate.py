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
