"""Evaluation metrics for classifiers and ensembles. Each returns a mean over the batch.

These are metrics, not losses: they reduce over the batch (``[B, C]`` logits -> a scalar).
Every function accepts logits or log-probabilities (``log_softmax`` is applied, which leaves
log-probabilities unchanged), e.g. the output of :func:`kdjax.fusion.average`.

Labels follow the losses' policy (:func:`kdjax.losses.label_mask`): a row whose label is
outside ``[0, C)`` (padding such as ``-1`` or ``-100``) is left out, and the means are
over the remaining rows (0 when there are none).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import losses


def _check(logits, labels, fn):
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  if logits.ndim != 2:
    raise ValueError(f"{fn}: logits must be [B, C], got shape {logits.shape}")
  if labels.shape != logits.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{fn}: labels must be integer [B] = ({logits.shape[0]},), got "
                     f"{labels.shape} {labels.dtype}")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"{fn}: logits must be floating, got {logits.dtype}")
  logits = logits.astype(jnp.result_type(jnp.float32, logits.dtype))  # bf16 -> float32
  return logits, labels, losses.label_mask(labels, logits.shape[-1])


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of examples whose argmax equals the label.

  Args:
    logits: ``[B, C]`` logits or log-probabilities.
    labels: ``[B]`` integer labels.

  Returns:
    Scalar in ``[0, 1]``.
  """
  logits, labels, valid = _check(logits, labels, "accuracy")
  return losses.masked_mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32), valid)


def nll(logits_or_log_probs: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean negative log-likelihood :math:`-\\frac1B\\sum_b \\log\\mathrm{softmax}(z_b)_{y_b}`.

  The mean of :func:`kdjax.losses.cross_entropy` (the one NLL of kdjax) over the valid rows;
  the fusion fits use it too.

  Args:
    logits_or_log_probs: ``[B, C]``; log-probabilities pass through ``log_softmax``
      unchanged.
    labels: ``[B]`` integer labels.
  """
  logits, labels, valid = _check(logits_or_log_probs, labels, "nll")
  return losses.masked_mean(losses.cross_entropy(logits, labels), valid)


def brier_score(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Multi-class Brier score, summed over classes and averaged over the batch.

  .. math:: \\frac1B \\sum_b \\sum_c (p_{bc} - [y_b = c])^2 \\in [0, 2]

  (Brier 1950's original form; some libraries divide by ``C`` as well.)
  """
  logits, labels, valid = _check(logits, labels, "brier_score")
  probs = jax.nn.softmax(logits, axis=-1)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=probs.dtype)
  return losses.masked_mean(jnp.sum(jnp.square(probs - onehot), axis=-1), valid)


def _bin_stats(logits, labels, valid, num_bins):
  """Per-bin (count, sum of accuracy, sum of confidence) of the valid rows; bins
  ``(i/n, (i+1)/n]``."""
  probs = jax.nn.softmax(logits, axis=-1)
  conf = jnp.max(probs, axis=-1)
  correct = (jnp.argmax(probs, axis=-1) == labels).astype(probs.dtype)
  idx = jnp.clip(jnp.ceil(conf * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
  zeros = jnp.zeros(num_bins, probs.dtype)
  count = zeros.at[idx].add(valid.astype(probs.dtype))
  acc_sum = zeros.at[idx].add(jnp.where(valid, correct, 0))
  conf_sum = zeros.at[idx].add(jnp.where(valid, conf, 0))
  return count, acc_sum, conf_sum


def expected_calibration_error(logits: jax.Array, labels: jax.Array,
                               num_bins: int = 15) -> jax.Array:
  """Expected calibration error with ``num_bins`` equal-width confidence bins.

  .. math::
    \\mathrm{ECE} = \\sum_{i} \\frac{|S_i|}{B} \\big|\\mathrm{acc}(S_i) - \\mathrm{conf}(S_i)\\big|

  where :math:`S_i` holds the examples whose confidence :math:`\\max_c p_{bc}` lies in
  ``(i / n, (i + 1) / n]``, ``acc`` is their accuracy and ``conf`` their mean confidence.

  References:
    Naeini et al. 2015; Guo et al. 2017, "On calibration of modern neural networks".
  """
  logits, labels, valid = _check(logits, labels, "expected_calibration_error")
  count, acc_sum, conf_sum = _bin_stats(logits, labels, valid, num_bins)
  return jnp.sum(jnp.abs(acc_sum - conf_sum)) / jnp.maximum(jnp.sum(count), 1)


def member_disagreement(member_logits: jax.Array, *, pairwise: bool = False) -> jax.Array:
  """How often members disagree on the predicted class.

  * ``pairwise=False`` (default): the fraction of (member, example) pairs whose argmax
    differs from the argmax of the probability-averaged ensemble,
    :math:`\\frac{1}{MB}\\sum_{m,b} [\\arg\\max z_{mb} \\ne \\arg\\max \\bar p_b]`.
  * ``pairwise=True``: the mean over member pairs ``m < n`` of the fraction of examples
    where their argmaxes differ (Fort et al. 2019's prediction disagreement).

  Args:
    member_logits: ``[M, B, C]``.

  Returns:
    Scalar in ``[0, 1]`` (0 for ``M = 1``).
  """
  member_logits = jnp.asarray(member_logits)
  if member_logits.ndim != 3:
    raise ValueError(f"member_disagreement: member_logits must be [M, B, C], got "
                     f"{member_logits.shape}")
  m = member_logits.shape[0]
  preds = jnp.argmax(member_logits, axis=-1)  # [M, B]
  if not pairwise:
    mean_probs = jnp.mean(jax.nn.softmax(member_logits, axis=-1), axis=0)
    return jnp.mean(preds != jnp.argmax(mean_probs, axis=-1)[None, :])
  if m < 2:
    return jnp.zeros((), member_logits.dtype)
  differ = (preds[:, None, :] != preds[None, :, :]).mean(axis=-1)  # [M, M]
  return jnp.sum(jnp.triu(differ, k=1)) / (m * (m - 1) / 2)


def reliability_diagram(logits: jax.Array, labels: jax.Array, path: str, *,
                        num_bins: int = 15, title: str | None = None) -> dict:
  """Writes a reliability diagram (accuracy vs confidence per bin) as a PNG at ``path``.

  Draws on matplotlib's Agg canvas (no display; pyplot's backend is untouched). Bars show
  each bin's accuracy, each labelled with its number of examples (a bin of three examples
  says little); the diagonal is perfect calibration; the title gives the ECE.

  Returns:
    ``{"ece", "count", "accuracy", "confidence"}`` (per-bin NumPy arrays; empty bins NaN).
  """
  # The Agg canvas directly: no pyplot, so the caller's matplotlib backend is left alone.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  logits, labels, valid = _check(logits, labels, "reliability_diagram")
  count, acc_sum, conf_sum = (np.asarray(a, np.float64) for a in
                              _bin_stats(logits, labels, valid, num_bins))
  with np.errstate(invalid="ignore", divide="ignore"):
    acc, conf = acc_sum / count, conf_sum / count
  ece = float(np.sum(np.abs(acc_sum - conf_sum)) / max(np.sum(count), 1))
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  fig = Figure(figsize=(4, 4), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ax.bar(edges[:-1], np.nan_to_num(acc), width=1.0 / num_bins, align="edge",
         edgecolor="black", label="accuracy")
  for left, a, n in zip(edges[:-1], np.nan_to_num(acc), count):
    if n:
      ax.text(left + 0.5 / num_bins, min(a + 0.01, 0.97), f"{int(n)}", ha="center",
              va="bottom", fontsize=6, rotation=90)
  ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
  ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
         title=title or f"ECE = {ece:.4f}")
  ax.legend(loc="upper left")
  fig.tight_layout()
  fig.savefig(path)
  return {"ece": ece, "count": count, "accuracy": acc, "confidence": conf}
