"""Sample photos from installed wheels, preprocessing conventions, ImageNet class names."""

from __future__ import annotations

import numpy as np
import pytest

from tvmsqz.errors import TvmsqzError
from tvmsqz.images import class_names, preprocess, sample_images

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def test_sample_images_are_real_rgb_photos():
    imgs = sample_images()
    names = [n for n, _ in imgs]
    assert len(names) == len(set(names))
    assert {"chelsea", "coffee", "astronaut", "rocket", "motorcycle"} <= set(names)
    for name, img in imgs:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert min(img.shape[:2]) >= 200, name
        assert img.std() > 20, name  # a photo, not a flat or synthetic image
        # colour: the channels are not all the same
        assert np.abs(img[..., 0].astype(int) - img[..., 2].astype(int)).mean() > 3, name
    shapes = {img.shape for _, img in imgs}
    assert len(shapes) > 1
    chelsea = dict(imgs)["chelsea"]
    assert chelsea.shape == (300, 451, 3)
    # chelsea is a ginger tabby: red dominates blue on average
    assert chelsea[..., 0].mean() > chelsea[..., 2].mean() + 20


def test_sample_images_are_protected_from_mutation():
    img = sample_images()[0][1]
    with pytest.raises(ValueError):
        img[0, 0, 0] = 1


@pytest.mark.parametrize("size", [224, 227, 32])
def test_preprocess_shapes(size):
    img = dict(sample_images())["chelsea"]
    for conv in ("torchvision", "caffe"):
        x = preprocess(img, conv, size)
        assert x.shape == (1, 3, size, size) and x.dtype == np.float32
        assert x.flags.c_contiguous and np.isfinite(x).all()


def test_torchvision_convention_on_flat_colour():
    rgb = np.array([200, 100, 30], np.uint8)
    img = np.broadcast_to(rgb, (240, 320, 3)).copy()
    x = preprocess(img, "torchvision", 224)
    want = (rgb / 255.0 - MEAN) / STD
    for c in range(3):
        np.testing.assert_allclose(x[0, c], want[c], rtol=1e-5, atol=1e-5)


def test_caffe_convention_on_flat_colour():
    rgb = np.array([200, 100, 30], np.uint8)
    img = np.broadcast_to(rgb, (300, 260, 3)).copy()  # portrait
    x = preprocess(img, "caffe", 227)
    # BGR order, 0..255, minus (104, 117, 123)
    for c, want in enumerate([30 - 104, 100 - 117, 200 - 123]):
        np.testing.assert_allclose(x[0, c], want, atol=1e-4)


def test_centre_crop_keeps_the_middle():
    # landscape: left third red, middle green, right third blue
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, :100, 0] = img[:, 100:200, 1] = img[:, 200:, 2] = 255
    x = preprocess(img, "caffe", 50)
    b, g, r = x[0] + np.array([104, 117, 123], np.float32)[:, None, None]
    np.testing.assert_allclose(g, 255, atol=1e-3)
    np.testing.assert_allclose(r, 0, atol=1e-3)
    np.testing.assert_allclose(b, 0, atol=1e-3)
    # portrait: the same stripes stacked vertically, transposed
    x = preprocess(img.transpose(1, 0, 2), "torchvision", 50)
    np.testing.assert_allclose(x[0, 1], (1.0 - MEAN[1]) / STD[1], atol=1e-4)


def test_preprocess_resizes_not_just_crops():
    """A 2x2 checker of quadrants must survive as four quadrants after resizing."""
    img = np.zeros((400, 400, 3), np.uint8)
    img[:200, :200] = img[200:, 200:] = 255
    x = preprocess(img, "torchvision", 224)[0, 0]
    assert x[10, 10] > 0 and x[-10, -10] > 0  # white corners
    assert x[10, -10] < 0 and x[-10, 10] < 0  # black corners


def test_preprocess_accepts_grey_rgba_and_float():
    grey = np.full((64, 80), 128, np.uint8)
    x = preprocess(grey, "caffe", 32)
    np.testing.assert_allclose(x[0, :, 0, 0], [128 - 104, 128 - 117, 128 - 123], atol=1e-4)
    rgba = np.full((64, 80, 4), 128, np.uint8)
    np.testing.assert_allclose(preprocess(rgba, "caffe", 32), x)
    flt = np.full((64, 80, 3), 128 / 255, np.float32)
    np.testing.assert_allclose(preprocess(flt, "caffe", 32), x, atol=1e-3)


def test_preprocess_errors():
    img = dict(sample_images())["coffee"]
    with pytest.raises(TvmsqzError, match="convention"):
        preprocess(img, "tensorflow", 224)
    with pytest.raises(TvmsqzError, match="image"):
        preprocess(np.zeros((4, 4, 5), np.uint8), "caffe", 8)
    with pytest.raises(TvmsqzError, match="size"):
        preprocess(img, "caffe", 0)


def test_class_names():
    names = class_names()
    assert len(names) == 1000
    assert all(isinstance(n, str) and n and "," not in n for n in names)
    assert names[0] == "tench"
    assert names[281] == "tabby" and names[282] == "tiger cat" and names[285] == "Egyptian cat"
    assert names[504] == "coffee mug" and names[967] == "espresso" and names[968] == "cup"
    assert names[999] == "toilet tissue"
    assert len(set(names)) == 998  # "crane" and "maillot" name two synsets each
    names.append("x")
    assert len(class_names()) == 1000  # callers get their own list
