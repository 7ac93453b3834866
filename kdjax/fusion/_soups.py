"""Weight-space fusion of members fine-tuned from a shared init: model soups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.ensemble import num_members, unstack


def uniform_soup(stacked_params: Any) -> Any:
  """Uniform soup: the mean of the members' weights.

  .. math:: \\theta_{soup} = \\tfrac1M \\textstyle\\sum_m \\theta_m

  Args:
    stacked_params: ``[M, ...]`` stacked member params (one architecture, ideally
      fine-tuned from one shared init; unrelated inits average to a poor model).

  Returns:
    One member's params pytree.

  References:
    Wortsman et al. 2022, "Model soups", ICML.
  """
  num_members(stacked_params)
  return jax.tree.map(lambda p: jnp.mean(p, axis=0), stacked_params)


class GreedySoup(NamedTuple):
  """Result of :func:`greedy_soup`.

  Attributes:
    params: the soup (mean of the chosen members' params).
    indices: chosen member indices, in the order they were added.
    score: ``eval_fn(params)``, the soup's held-out score.
    member_scores: ``[M]`` held-out score of every member alone.
  """

  params: Any
  indices: list[int]
  score: float
  member_scores: np.ndarray


def greedy_soup(stacked_params: Any, eval_fn: Callable[[Any], Any]) -> GreedySoup:
  """Greedy soup: add members best-first while the averaged model's held-out score improves.

  Members are sorted by ``eval_fn`` descending; the soup starts as the best member; each
  next member is added iff the mean of the soup's members plus it scores **strictly**
  higher. The result therefore scores at least as high as the best single member (on the
  data ``eval_fn`` uses; pick a held-out split, not the test set).

  Args:
    stacked_params: ``[M, ...]`` stacked member params from one shared init.
    eval_fn: ``eval_fn(params) -> scalar``, higher is better (e.g. held-out accuracy or
      minus NLL). Called ``2M - 1`` times; jit it yourself if it is expensive.

  Returns:
    :class:`GreedySoup` ``(params, indices, score, member_scores)``.

  References:
    Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models
    improves accuracy without increasing inference time", ICML (Recipe 1).
  """
  members = unstack(stacked_params)
  scores = np.asarray([float(eval_fn(p)) for p in members])
  order = [int(i) for i in np.argsort(-scores, kind="stable")]
  chosen = [order[0]]
  total = members[order[0]]
  soup, best = total, float(scores[order[0]])
  for i in order[1:]:
    cand_total = jax.tree.map(jnp.add, total, members[i])
    cand = jax.tree.map(lambda t, k=len(chosen) + 1: t / k, cand_total)
    score = float(eval_fn(cand))
    if score > best:
      chosen.append(i)
      total, soup, best = cand_total, cand, score
  return GreedySoup(soup, chosen, best, scores)
