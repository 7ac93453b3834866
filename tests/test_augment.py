"""Host augmentation: crops, flips, Inception crops, eval crops, normalisation, mixup."""

import math

import numpy as np
import pytest

from kdjax import data


def _image(h=32, w=32, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _windows(padded, h, w):
  """Every (top, left) whose h x w window of ``padded`` exists."""
  return [(i, j) for i in range(padded.shape[0] - h + 1) for j in range(padded.shape[1] - w + 1)]


def test_example_rng_is_a_function_of_seed_epoch_index():
  draw = lambda *k: data.example_rng(*k).integers(1 << 30, size=4)  # noqa: E731
  np.testing.assert_array_equal(draw(1, 2, 3), draw(1, 2, 3))
  assert not np.array_equal(draw(1, 2, 3), draw(1, 3, 3))
  assert not np.array_equal(draw(1, 2, 3), draw(1, 2, 4))
  assert not np.array_equal(draw(1, 2, 3), draw(2, 2, 3))
  assert not np.array_equal(draw(0, 1, 5), draw(1, 0, 5))


def test_pad_crop_is_a_window_of_the_padded_image_and_every_offset_occurs():
  image = _image()
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  seen = set()
  for k in range(600):
    out = data.pad_crop(image, data.example_rng(0, 0, k), pad=4)
    assert out.shape == image.shape and out.dtype == np.uint8
    matches = [(i, j) for i, j in _windows(padded, 32, 32)
               if np.array_equal(padded[i:i + 32, j:j + 32], out)]
    assert len(matches) == 1  # random pixels: the window is unique
    seen.add(matches[0])
  assert seen == set(_windows(padded, 32, 32))  # all 81 offsets in [0, 8]^2
  np.testing.assert_array_equal(data.pad_crop(image, data.example_rng(0, 0, 0), pad=0), image)


def test_flip_is_a_mirror_and_happens_about_half_the_time():
  image = _image()
  flips = 0
  for k in range(400):
    out = data.random_flip(image, data.example_rng(1, 0, k))
    if np.array_equal(out, image[:, ::-1]):
      flips += 1
    else:
      np.testing.assert_array_equal(out, image)
  assert 160 < flips < 240
  # A flip is exactly a mirror: column j of the output is column W-1-j of the input.
  mirrored = image[:, ::-1]
  for j in range(32):
    np.testing.assert_array_equal(mirrored[:, j], image[:, 31 - j])


@pytest.mark.parametrize("height,width", [(375, 500), (500, 375), (64, 64)])
def test_inception_crop_box_bounds(height, width):
  for k in range(500):
    top, left, h, w = data.random_resized_crop_box(data.example_rng(2, 0, k), height, width)
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
    # Rounding moves each side by at most 0.5 pixel.
    assert (w - 0.5) * (h - 0.5) <= height * width * 1.0 + 1e-9
    assert (w + 0.5) * (h + 0.5) >= height * width * 0.08
    assert (w - 0.5) / (h + 0.5) <= 4 / 3 + 1e-9 and (w + 0.5) / (h - 0.5) >= 3 / 4 - 1e-9


def test_inception_crop_box_distribution_when_every_draw_fits():
  # On a 1000 x 1000 image every box with area <= 0.5 and aspect in [3/4, 4/3] fits, so
  # no draw is rejected: the area fraction is U(0.08, 0.5) and the log aspect U(log 3/4, log 4/3).
  areas, log_ratios = [], []
  for k in range(2000):
    _, _, h, w = data.random_resized_crop_box(data.example_rng(3, 0, k), 1000, 1000,
                                              scale=(0.08, 0.5))
    areas.append(h * w / 1e6)
    log_ratios.append(math.log(w / h))
  assert abs(np.mean(areas) - 0.29) < 0.01      # 2000 draws: std of the mean ~0.0027
  assert abs(np.mean(log_ratios)) < 0.01        # std of the mean ~0.0037
  assert min(areas) >= 0.079 and max(areas) <= 0.501


def test_inception_crop_falls_back_to_a_centred_box_on_extreme_aspects():
  # A 10 x 400 strip: no sampled box with aspect <= 4/3 and area >= 8% fits.
  top, left, h, w = data.random_resized_crop_box(data.example_rng(0, 0, 0), 10, 400)
  assert (h, w) == (10, round(10 * 4 / 3)) and top == 0 and left == (400 - w) // 2


def test_random_resized_crop_output():
  image = _image(90, 120)
  out = data.random_resized_crop(image, data.example_rng(0, 0, 1), size=48)
  assert out.shape == (48, 48, 3) and out.dtype == np.uint8
  const = np.full((90, 120, 3), 77, np.uint8)
  np.testing.assert_array_equal(data.random_resized_crop(const, data.example_rng(0, 0, 1), size=48),
                                np.full((48, 48, 3), 77, np.uint8))


def test_eval_center_crop_is_deterministic_and_central():
  image = _image(256, 256)
  np.testing.assert_array_equal(data.resize_center_crop(image, size=224), image[16:240, 16:240])
  wide = _image(300, 400)
  a = data.resize_center_crop(wide, size=224)
  assert a.shape == (224, 224, 3)
  np.testing.assert_array_equal(a, data.resize_center_crop(wide, size=224))
  one_channel = _image(40, 30, 1)
  assert data.resize_center_crop(one_channel, size=16).shape == (16, 16, 1)


def test_normalize_matches_float64_reference():
  image = _image(5, 6)
  mean, std = data.TFDS_DATASETS["cifar100"].mean, data.TFDS_DATASETS["cifar100"].std
  ref = (image.astype(np.float64) / 255 - np.array(mean)) / np.array(std)
  out = data.normalize(image, mean, std)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="one value per channel"):
    data.normalize(image, (0.5,), (0.2,))


def test_dataset_constants_are_the_standard_ones():
  assert data.TFDS_DATASETS["cifar100"].mean == (0.5071, 0.4867, 0.4408)
  assert data.TFDS_DATASETS["cifar100"].std == (0.2675, 0.2565, 0.2761)
  assert data.TFDS_DATASETS["imagenet2012"].mean == (0.485, 0.456, 0.406)
  assert data.TFDS_DATASETS["imagenet2012"].std == (0.229, 0.224, 0.225)


def test_mixup_is_a_convex_combination_matching_a_float64_reference():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 4, 4, 3)).astype(np.float32)
  y = rng.integers(0, 5, 16)
  mixed, probs = data.mixup(x, y, np.random.default_rng(7), alpha=0.4, num_classes=5)
  ref_rng = np.random.default_rng(7)
  lam = ref_rng.beta(0.4, 0.4)
  perm = ref_rng.permutation(16)
  eye = np.eye(5)
  np.testing.assert_allclose(mixed, lam * x.astype(np.float64) + (1 - lam) * x[perm], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(probs, lam * eye[y] + (1 - lam) * eye[y[perm]], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  assert (probs >= 0).all() and ((probs > 0).sum(-1) <= 2).all()
  lo, hi = np.minimum(x, x[perm]), np.maximum(x, x[perm])
  assert (mixed >= lo - 1e-6).all() and (mixed <= hi + 1e-6).all()


def test_bad_arguments_name_the_problem():
  with pytest.raises(ValueError, match="alpha"):
    data.mixup(np.zeros((2, 3)), np.zeros(2, int), np.random.default_rng(0), alpha=0,
               num_classes=2)
  with pytest.raises(ValueError, match="labels"):
    data.mixup(np.zeros((2, 3)), np.zeros(3, int), np.random.default_rng(0), alpha=1,
               num_classes=2)
  with pytest.raises(ValueError, match="Unknown augmentation"):
    data.augment_image(_image(), np.random.default_rng(0), kind="cutout", size=32)
  with pytest.raises(ValueError, match="needs an rng"):
    data.augment_image(_image(), None, kind="pad_crop_flip", size=32)
  with pytest.raises(ValueError, match=r"\[H, W, C\]"):
    data.pad_crop(np.zeros((4, 4), np.uint8), np.random.default_rng(0))
