"""float64 NumPy references of the losses (official code transcribed), shared by the loss
tests and the fuzz tests. Independent of kdjax: NumPy and SciPy only."""

import numpy as np
import scipy.special


# ------------------------------------------------------------------------ logit losses
def np_log_softmax(x, axis=-1):
  x = x - x.max(axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis, keepdims=True))


def ref_soft_target_kl(s, t, temperature=1.0):
  ls, lt = np_log_softmax(s / temperature), np_log_softmax(t / temperature)
  return temperature**2 * np.sum(np.exp(lt) * (lt - ls), -1)


def ref_cross_entropy(z, y):
  return -np.take_along_axis(np_log_softmax(z), y[..., None], -1)[..., 0]


def ref_hinton_kd(s, t, y, temperature, alpha):
  return alpha * ref_soft_target_kl(s, t, temperature) + (1 - alpha) * ref_cross_entropy(s, y)


def _kl_div(log_input, target):  # torch.nn.functional.kl_div elementwise, summed over classes
  return np.sum(np.where(target > 0, target * (np.log(np.where(target > 0, target, 1))
                                                 - log_input), 0.0), -1)


def ref_dkd(s, t, y, alpha, beta, temperature):
  """mdistiller ``dkd_loss`` per example (no batch sum / B), literally."""
  gt = np.eye(s.shape[-1])[y]
  ps = scipy.special.softmax(s / temperature, -1)
  pt = scipy.special.softmax(t / temperature, -1)
  cat = lambda p: np.stack([(p * gt).sum(-1), (p * (1 - gt)).sum(-1)], -1)
  tckd = _kl_div(np.log(cat(ps)), cat(pt)) * temperature**2
  pt2 = scipy.special.softmax(t / temperature - 1000.0 * gt, -1)
  lps2 = scipy.special.log_softmax(s / temperature - 1000.0 * gt, -1)
  nckd = _kl_div(lps2, pt2) * temperature**2
  return alpha * tckd + beta * nckd


def ref_dkd_exact(s, t, y, alpha, beta, temperature):
  """DKD in log space with the target class removed by -inf (the exact form of -1000)."""
  gt = np.eye(s.shape[-1], dtype=bool)[y]
  def parts(z):
    lp = scipy.special.log_softmax(z / temperature, -1)
    binary = np.stack([lp[gt], scipy.special.logsumexp(np.where(gt, -np.inf, lp), -1)], -1)
    return binary, scipy.special.log_softmax(np.where(gt, -np.inf, z / temperature), -1)
  (bs, ns), (bt, nt) = parts(s), parts(t)
  kl = lambda lt, ls: np.sum(np.exp(lt) * np.where(np.isneginf(lt), 0.0, lt - np.where(
      np.isneginf(lt), 0.0, ls)), -1)
  return temperature**2 * (alpha * kl(bt, bs) + beta * kl(nt, ns))


def ref_dist(zs, zt, beta, gamma, temperature):
  """DIST_KD ``DIST.forward``, literally."""
  def pearson(a, b, eps=1e-8):
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + eps)
  ys = scipy.special.softmax(zs / temperature, 1)
  yt = scipy.special.softmax(zt / temperature, 1)
  inter = temperature**2 * (1 - pearson(ys, yt).mean())
  intra = temperature**2 * (1 - pearson(ys.T, yt.T).mean())
  return beta * inter + gamma * intra


# ---------------------------------------------------------------- feature losses
def ref_hint(s, t):
  return np.mean((s - t).reshape(s.shape[0], -1) ** 2, axis=1)


def ref_conv_reg(x, kernel, bias, gamma, beta, rows=None, eps=1e-5):
  """RepDistiller / mdistiller ``ConvReg`` for equal spatial dims, in training mode:
  ``relu(bn(conv1x1(x)))``, BatchNorm with the batch's biased variance (channels last;
  ``rows``: the [B] valid rows the statistics use)."""
  z = x @ kernel + bias
  zs = z if rows is None else z[rows]
  axes = tuple(range(z.ndim - 1))
  mu, var = zs.mean(axes), zs.var(axes)
  return np.maximum(gamma * (z - mu) / np.sqrt(var + eps) + beta, 0.0)


def _normalize(x, eps=1e-12):  # torch.nn.functional.normalize(x, dim=-1)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def ref_attention_transfer(s, t, p=2):
  """RepDistiller ``Attention.at_loss`` per example (channels last here)."""
  at = lambda f: _normalize((np.abs(f) ** p).mean(-1).reshape(f.shape[0], -1))
  return np.mean((at(s) - at(t)) ** 2, axis=1)


def ref_similarity_preserving(s, t):
  b = s.shape[0]
  s, t = s.reshape(b, -1), t.reshape(b, -1)
  gs, gt = _normalize(s @ s.T), _normalize(t @ t.T)
  return np.sum((gt - gs) ** 2) / b**2


def _smooth_l1(x):
  return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)


def _pdist(e, eps=1e-12):
  sq = (e**2).sum(1)
  d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * e @ e.T, eps))
  d[np.arange(len(e)), np.arange(len(e))] = 0
  return d


def ref_rkd_distance(s, t):
  b = s.shape[0]
  td, sd = _pdist(t.reshape(b, -1)), _pdist(s.reshape(b, -1))
  td, sd = td / td[td > 0].mean(), sd / sd[sd > 0].mean()
  return np.mean(_smooth_l1(sd - td))


def ref_rkd_angle(s, t):
  def angles(e):
    e = e.reshape(e.shape[0], -1)
    n = _normalize(e[None, :, :] - e[:, None, :])
    return np.einsum("ijd,ikd->ijk", n, n).ravel()
  return np.mean(_smooth_l1(angles(s) - angles(t)))


def ref_pkt(s, t, eps=1e-7):
  def probs(e):
    e = e.reshape(e.shape[0], -1)
    e = e / (np.linalg.norm(e, axis=1, keepdims=True) + eps)
    k = (e @ e.T + 1) / 2
    return k / k.sum(1, keepdims=True)
  ps, pt = probs(s), probs(t)
  return np.mean(pt * np.log((pt + eps) / (ps + eps)))
