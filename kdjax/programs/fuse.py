"""``kdjax fuse``: compare every way of fusing trained members on held-out data.

Loads member workdirs (any mix of architectures), computes member logits on the
validation split (carved from the training data, ``config.data.val_size``) and the test
split, fits the learned combiners on validation only, and reports on test:
every member; average fusion in the three spaces; fixed weights; weights fitted by NLL
and by random search; deep fusion (cross-fitted); the uniform and greedy soups of each
architecture group (soups of BatchNorm members average the running statistics; with
``config.repair_examples > 0`` they are re-estimated on that many training examples,
:func:`kdjax.fusion.repair_batch_norm`). Writes ``WORKDIR/report.md``, ``WORKDIR/report.json`` and a
reliability diagram PNG (``reliability.png``) of the best fused predictor (the report's
``best``: lowest test NLL among the fused predictors, first listed on ties; calibration is
what the diagram shows, and NLL is the score that rewards it), with its bins' counts.

Fitting weights on examples a member was trained on would favour the member that
memorised them: :func:`check_members_held_out` refuses such members before anything is
computed.

Members keep the user's order everywhere (``config.members``, ``fixed_weights``, "member
i" in the report), even when architectures are interleaved: the loader stacks members by
architecture, and their logits are put back in the given order.
"""

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdjax import data as kd_data
from kdjax import ensemble, fusion, metrics
from kdjax.models import eval_logits
from kdjax.training import load_teachers


def _scores(log_probs, labels) -> dict[str, float]:
  return {"accuracy": float(metrics.accuracy(log_probs, labels)),
          "nll": float(metrics.nll(log_probs, labels)),
          "ece": float(metrics.expected_calibration_error(log_probs, labels))}


def _group_logits(group, x) -> jax.Array:
  return ensemble.apply(eval_logits(group.model), group.variables, jnp.asarray(x))


def member_logits(groups, x) -> jax.Array:
  """``[M, B, C]`` logits of every member, in the user's order (``group.indices``)."""
  order = np.argsort(np.concatenate([g.indices for g in groups]))
  return jnp.concatenate([_group_logits(g, x) for g in groups])[order]


def check_members_held_out(members, data_config) -> None:
  """Every member must have been trained without the examples fusion fits on: the last
  ``data_config.val_size`` training examples of the same data set. A member's
  ``config.json`` must name the same ``data.name`` and ``data.kwargs`` and hold out at
  least as many examples (``data.val_size``); a distilled member's teachers
  (``teacher.workdir``) must too.

  Raises:
    ValueError: naming the first member that saw the fitting split (or whose data cannot
      be told), and why.
  """
  from kdjax.training.teachers._load import parse_workdirs

  want_kwargs = json.loads(json.dumps(dict(data_config.get("kwargs", {}))))  # as config.json: lists
  for workdir in parse_workdirs(members):
    path = pathlib.Path(workdir) / "config.json"
    try:
      data = json.loads(path.read_text())["data"]
    except (OSError, ValueError, KeyError) as e:
      raise ValueError(f"kdjax fuse: cannot tell which examples member {workdir!r} trained on "
                       f"({path}: {type(e).__name__}); fusion fits on held-out examples only")
    kwargs = data.get("kwargs") or {}
    if data.get("name") != data_config.name or kwargs != want_kwargs:
      raise ValueError(f"kdjax fuse: member {workdir!r} trained on data {data.get('name')!r} "
                       f"{kwargs}, not {data_config.name!r} {want_kwargs}: its training "
                       "examples may include the fitting split")
    if data.get("val_size", 0) < data_config.val_size:
      raise ValueError(
          f"kdjax fuse: member {workdir!r} trained on examples fusion fits on: it held out "
          f"data.val_size={data.get('val_size', 0)} of the last training examples, fusion "
          f"fits on the last {data_config.val_size}. Train it with "
          f"--config.data.val_size={data_config.val_size}, or leave it out")
    teachers = (json.loads(path.read_text()).get("teacher") or {}).get("workdir") or ""
    if teachers:  # a distilled member learnt from its teachers' view of those examples too
      try:
        check_members_held_out(teachers, data_config)
      except ValueError as e:
        raise ValueError(f"kdjax fuse: member {workdir!r} was distilled from a teacher that "
                         f"saw the fitting split: {e}") from None


def run_fuse(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fits and evaluates every fusion of ``config.members``; returns the report dict."""
  out = pathlib.Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  if not config.data.val_size:
    raise ValueError("kdjax fuse fits on a validation split: set config.data.val_size > 0 "
                     "(the members must have been trained without those examples)")
  splits = kd_data.load_dataset(config.data.name, **config.data.get("kwargs", {}),
                                val_size=config.data.val_size)
  groups = load_teachers(config.members, num_classes=splits["num_classes"])
  check_members_held_out(config.members, config.data)
  by_index = {i: w for g in groups for i, w in zip(g.indices, g.workdirs)}
  names = [pathlib.Path(by_index[i]).name for i in sorted(by_index)]
  val, test = splits["val"], splits["test"]
  val_logits = member_logits(groups, val["x"])
  test_logits = member_logits(groups, test["x"])
  num_members = val_logits.shape[0]

  predictions: dict[str, jax.Array] = {}  # fused predictor -> test log-probs
  rows: dict[str, dict[str, float]] = {}
  for i, name in enumerate(names):
    rows[f"member {i} ({name})"] = _scores(test_logits[i], test["y"])
  for space in fusion.SPACES:
    predictions[f"average ({space})"] = fusion.average(test_logits, space=space)
  if config.fixed_weights:
    if len(config.fixed_weights) != num_members:
      raise ValueError(f"config.fixed_weights has {len(config.fixed_weights)} entries but "
                       f"config.members names {num_members} members (same order)")
    w = jnp.asarray(config.fixed_weights, jnp.float32)
    predictions["weighted (fixed)"] = fusion.weighted(test_logits, w, space=config.space)
  fitted = {}
  for method in ("nll", "random"):
    fit = fusion.fit_weights(val_logits, val["y"], space=config.space, method=method,
                             fit_temperature=config.fit_temperature and method == "nll",
                             seed=config.seed)
    fitted[method] = fit
    predictions[f"fitted weights ({method})"] = fit.apply(test_logits)
  deep = fusion.fit_deep_fusion(val_logits, val["y"], folds=config.deep.folds,
                                hidden=tuple(config.deep.hidden), steps=config.deep.steps,
                                space=config.space, seed=config.seed)
  predictions["deep fusion"] = deep.predict(test_logits)

  soups = {}
  repair_n = int(config.get("repair_examples", 0))
  repair_x = np.asarray(splits["train"]["x"][:repair_n])
  for group in groups:
    if group.size < 2:
      continue
    arch = type(group.model).__name__
    # Soups average every variable: params and the BatchNorm running statistics; with
    # config.repair_examples > 0 the statistics are then re-estimated on training data.
    apply = jax.jit(eval_logits(group.model))
    fix, suffix = (lambda v: v), ""
    if repair_n > 0 and "batch_stats" in group.variables:
      batches = [{"x": repair_x[i:i + 250]} for i in range(0, len(repair_x), 250)]
      fix = lambda v, m=group.model, b=batches: fusion.repair_batch_norm(m, v, b)  # noqa: E731
      suffix = ", BN repaired"
    predictions[f"uniform soup ({arch} x{group.size}{suffix})"] = apply(
        fix(fusion.uniform_soup(group.variables)), test["x"])
    greedy = fusion.greedy_soup(
        group.variables, lambda v: metrics.accuracy(apply(fix(v), val["x"]), val["y"]))
    predictions[f"greedy soup ({arch}, {len(greedy.indices)} of {group.size}{suffix})"] = apply(
        fix(greedy.params), test["x"])
    # Soup indices count within the group; map them to the user's member numbers.
    soups[arch] = {"greedy_members": [int(group.indices[i]) for i in greedy.indices],
                   "greedy_val_accuracy": float(greedy.score)}
  rows.update({k: _scores(v, test["y"]) for k, v in predictions.items()})

  best = min(predictions, key=lambda k: rows[k]["nll"])
  diagram = metrics.reliability_diagram(
      predictions[best], test["y"], str(out / "reliability.png"), title=f"{best}, test")
  report = {
      "members": names,
      "num_members": num_members,
      "test": rows,
      "space": config.space,
      "fitted_weights": {m: np.asarray(f.weights).round(4).tolist() for m, f in fitted.items()},
      "deep_fusion_oof": {"nll": deep.oof_nll, "accuracy": deep.oof_accuracy},
      "member_disagreement_test": float(metrics.member_disagreement(test_logits)),
      "soups": soups,
      "best": best,
      "reliability_predictor": best,
      "reliability_ece": float(diagram["ece"]),
      "reliability_bins": {k: np.nan_to_num(np.asarray(diagram[k], np.float64)).round(4).tolist()
                           for k in ("count", "accuracy", "confidence")},
  }
  (out / "report.json").write_text(json.dumps(report, indent=2))
  lines = ["| predictor | test accuracy (%) | NLL | ECE |", "|---|---|---|---|"]
  lines += [f"| {k} | {v['accuracy'] * 100:.1f} | {v['nll']:.3f} | {v['ece']:.3f} |"
            for k, v in rows.items()]
  table = "\n".join(lines)
  chance = 1.0 / splits["num_classes"]
  notes = [f"- **{k}** is near chance ({v['accuracy'] * 100:.1f}%): the members do not share "
           "an initialisation, so their units are not aligned and the average of their "
           "weights is no network they trained (soups need members fine-tuned from one "
           "init: Wortsman et al. 2022, configs/mnist1d/soup_member_cnn.py)."
           for k, v in rows.items() if "soup" in k and v["accuracy"] < 2 * chance]
  bins = [f"| {lo:.2f}-{lo + 1 / len(diagram['count']):.2f} | {int(n)} | {a:.3f} | {c:.3f} |"
          for lo, n, a, c in zip(np.linspace(0, 1, len(diagram["count"]) + 1)[:-1],
                                 diagram["count"], diagram["accuracy"], diagram["confidence"])
          if n]
  (out / "report.md").write_text(
      f"# kdjax fuse: {num_members} members\n\nFitted on {len(val['y'])} validation examples; "
      f"scored on {len(test['y'])} test examples.\n\n{table}\n\n"
      f"Fitted weights: {report['fitted_weights']}\n\n"
      + ("Notes:\n" + "\n".join(notes) + "\n\n" if notes else "")
      + f"Reliability diagram of the best fused predictor by test NLL, {best} (each bar "
      "labelled with its number of test examples):\n\n![reliability](reliability.png)\n\n"
      "| confidence bin | examples | accuracy | mean confidence |\n|---|---|---|---|\n"
      + "\n".join(bins) + "\n")
  print(table)
  return report
