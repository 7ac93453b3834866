"""Host-side image augmentation in NumPy, seeded per example so it is reproducible.

Every random choice for an example is drawn from :func:`example_rng` ``(seed, epoch,
index)``: the view of example ``index`` in epoch ``epoch`` is the same in every run, on
every host layout, and after a resume. One view is made per example and it is the input of
both the teacher and the student (function matching, Beyer et al. 2022).

Images are ``[H, W, C]`` uint8 until :func:`normalize` turns them into float32.

References:
  He et al. 2016, "Deep Residual Learning for Image Recognition" (CIFAR pad-4 crop + flip).
  Szegedy et al. 2015, "Going Deeper with Convolutions" (Inception random-resized crop);
  torchvision ``RandomResizedCrop.get_params`` is the procedure followed here.
  Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization".
  Beyer et al. 2022, "Knowledge distillation: A good teacher is patient and consistent".
"""

import math

import numpy as np

# Per-channel mean and std on the [0, 1] scale.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)  # RepDistiller
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def example_rng(seed: int, epoch: int, index: int, *extra: int) -> np.random.Generator:
  """The generator of example ``index`` in ``epoch``: a function of its arguments only."""
  return np.random.default_rng([int(seed), int(epoch), int(index), *map(int, extra)])


def _check_image(image: np.ndarray, name: str = "image") -> None:
  if not isinstance(image, np.ndarray) or image.ndim != 3:
    raise ValueError(f"{name} must be a [H, W, C] array, got shape {np.shape(image)}")


def pad_crop(image: np.ndarray, rng: np.random.Generator, *, pad: int = 4) -> np.ndarray:
  """Zero-pads ``pad`` pixels on each side and crops the original size at a uniformly
  random offset in ``[0, 2 * pad]^2`` (torchvision ``RandomCrop(size, padding=pad)``)."""
  _check_image(image)
  if pad < 0:
    raise ValueError(f"pad must be >= 0, got {pad}")
  h, w, _ = image.shape
  top, left = (int(v) for v in rng.integers(0, 2 * pad + 1, size=2))
  # The window [top, top + h) x [left, left + w) of the padded image, without padding it.
  out = np.zeros_like(image)
  dy, dx = top - pad, left - pad  # shift of the window in original coordinates
  ys, xs = slice(max(dy, 0), min(h + dy, h)), slice(max(dx, 0), min(w + dx, w))
  out[ys.start - dy:ys.stop - dy, xs.start - dx:xs.stop - dx] = image[ys, xs]
  return out


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Mirrors the width axis with probability 1/2."""
  return image[:, ::-1] if rng.random() < 0.5 else image


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int, *,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3),
                            attempts: int = 10) -> tuple[int, int, int, int]:
  """An Inception crop box ``(top, left, h, w)``.

  Draws area fraction :math:`s \\sim U(\\text{scale})` and aspect
  :math:`r = \\exp(u),\\ u \\sim U(\\log \\text{ratio})`; the box is
  :math:`w = \\mathrm{round}(\\sqrt{s H W r})`, :math:`h = \\mathrm{round}(\\sqrt{s H W / r})`,
  at a uniform position, retried up to ``attempts`` times until it fits; else the
  largest centred box whose aspect is clipped into ``ratio``.
  """
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(attempts):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of a uint8 ``[H, W, C]`` image with Pillow."""
  from PIL import Image  # pillow: a dependency of matplotlib and of this module

  _check_image(image)
  if image.shape[:2] == (height, width):
    return image
  image = np.ascontiguousarray(image)
  if image.shape[-1] == 3:  # one RGB call; other channel counts one plane at a time
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
  planes = [np.asarray(Image.fromarray(image[..., c]).resize((width, height),
                                                             Image.Resampling.BILINEAR))
            for c in range(image.shape[-1])]
  return np.stack(planes, axis=-1)


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, *, size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """An Inception crop (:func:`random_resized_crop_box`) resized to ``[size, size, C]``."""
  _check_image(image)
  top, left, h, w = random_resized_crop_box(rng, *image.shape[:2], scale=scale, ratio=ratio)
  return resize(image[top:top + h, left:left + w], size, size)


def resize_center_crop(image: np.ndarray, *, size: int, crop_fraction: float = 0.875) -> np.ndarray:
  """Evaluation view: resizes the shorter side to ``round(size / crop_fraction)`` (256 for
  224) and takes the central ``[size, size]`` crop. Deterministic."""
  _check_image(image)
  h, w, _ = image.shape
  short = int(round(size / crop_fraction))
  if h <= w:
    new_h, new_w = short, max(size, int(round(w * short / h)))
  else:
    new_h, new_w = max(size, int(round(h * short / w))), short
  resized = resize(image, new_h, new_w)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return resized[top:top + size, left:left + size]


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
  """:math:`(x / 255 - \\mu) / \\sigma` per channel, as float32; ``image`` is one
  ``[H, W, C]`` image or a batch ``[B, H, W, C]``."""
  if np.ndim(image) < 3:
    raise ValueError(f"image must be [..., H, W, C], got shape {np.shape(image)}")
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  if mean.shape != (image.shape[-1],) or std.shape != (image.shape[-1],):
    raise ValueError(f"mean {mean.shape} and std {std.shape} must have one value per channel "
                     f"of the image {image.shape}")
  scale = 1.0 / (255.0 * std)
  return image.astype(np.float32) * scale - mean / std


AUGMENTATIONS = ("none", "pad_crop", "pad_crop_flip", "inception_crop_flip", "center_crop")
RANDOM_AUGMENTATIONS = ("pad_crop", "pad_crop_flip", "inception_crop_flip")


def augment_image(image: np.ndarray, rng: np.random.Generator | None, *, kind: str,
                  size: int, pad: int = 4) -> np.ndarray:
  """Applies augmentation ``kind`` (one of :data:`AUGMENTATIONS`) to a uint8 image.

  ``none`` keeps the image; ``pad_crop`` jitters by up to ``pad`` pixels (Hinton et
  al.'s MNIST teacher); ``pad_crop_flip`` is the CIFAR recipe (:func:`pad_crop` then
  :func:`random_flip`); ``inception_crop_flip`` the ImageNet training view
  (:func:`random_resized_crop` to ``size`` then flip); ``center_crop`` the ImageNet
  evaluation view (:func:`resize_center_crop`).
  """
  if kind == "none":
    return image
  if kind == "center_crop":
    return resize_center_crop(image, size=size)
  if rng is None:
    raise ValueError(f"augmentation {kind!r} is random and needs an rng")
  if kind == "pad_crop":
    return pad_crop(image, rng, pad=pad)
  if kind == "pad_crop_flip":
    return random_flip(pad_crop(image, rng, pad=pad), rng)
  if kind == "inception_crop_flip":
    return random_flip(random_resized_crop(image, rng, size=size), rng)
  raise ValueError(f"Unknown augmentation {kind!r}; known: {AUGMENTATIONS}")


def mixup(x: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, alpha: float,
          num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Mixup of a batch with its own random permutation (Zhang et al. 2018).

  .. math::
    \\lambda \\sim \\mathrm{Beta}(\\alpha, \\alpha),\\quad
    \\tilde x_i = \\lambda x_i + (1 - \\lambda) x_{\\pi(i)},\\quad
    \\tilde y_i = \\lambda e_{y_i} + (1 - \\lambda) e_{y_{\\pi(i)}}

  One :math:`\\lambda` per batch, as in the paper's code.

  Args:
    x: ``[B, ...]`` float inputs.
    labels: ``[B]`` integer labels.
    rng: the batch's generator.
    alpha: Beta concentration (> 0).
    num_classes: width of the label distributions.

  Returns:
    ``(mixed_x [B, ...] float32, label_probs [B, num_classes] float32)``.
  """
  if alpha <= 0:
    raise ValueError(f"mixup alpha must be > 0, got {alpha}")
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
    raise ValueError(f"labels must be [B] for x {x.shape}, got {labels.shape}")
  lam = np.float32(rng.beta(alpha, alpha))
  perm = rng.permutation(x.shape[0])
  onehot = np.eye(num_classes, dtype=np.float32)[labels]
  mixed = lam * x + (1 - lam) * x[perm]
  return mixed.astype(np.float32), lam * onehot + (1 - lam) * onehot[perm]
