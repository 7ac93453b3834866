"""A batch of token rows is a batch of token examples.

For language models ``x`` is ``[B, T]`` (or packed ``[B, 2, T]``) and ``y [B, T]`` holds
the next tokens, ``-1`` where no loss is taken (padding, a document's last token, prompt
tokens; :mod:`kdjax.data._text`). Every per-token objective then reads the batch as
``N = B * T`` examples: logits ``[B, T, V] -> [N, V]``, labels ``[B, T] -> [N]``, features
``[B, T, ...] -> [N, ...]``, and the mask of valid examples is

.. math::
   m_{bt} = \\text{row}_b \\wedge (y_{bt} \\ge 0),

so every term (cross-entropy, any divergence, the fused terms) averages over the tokens
that carry a target, never over padding or prompts.
"""

import jax.numpy as jnp

from kdjax import losses


def is_token_batch(logits) -> bool:
  """Logits ``[B, T, V]`` (a language model) rather than ``[B, C]``."""
  return logits.ndim == 3


def token_examples(inputs: losses.LossInputs) -> losses.LossInputs:
  """``inputs`` of ``[B, T, ...]`` arrays as ``[B * T, ...]`` token examples, ``where``
  the tokens with a target (and a real row)."""
  b, t = inputs.student_logits.shape[:2]

  def flat(x):
    if x is None or x.ndim < 2 or tuple(x.shape[:2]) != (b, t):
      return x
    return x.reshape(b * t, *x.shape[2:])

  labels = flat(inputs.labels)
  where = None if labels is None else labels >= 0
  if inputs.where is not None:
    rows = jnp.repeat(inputs.where, t)
    where = rows if where is None else where & rows
  return inputs.replace(
      student_logits=flat(inputs.student_logits), labels=labels,
      label_probs=flat(inputs.label_probs), teacher_logits=flat(inputs.teacher_logits),
      teacher_topk_log_probs=flat(inputs.teacher_topk_log_probs),
      teacher_topk_indices=flat(inputs.teacher_topk_indices),
      student_features={k: flat(v) for k, v in inputs.student_features.items()},
      teacher_features={k: flat(v) for k, v in inputs.teacher_features.items()},
      where=where)
