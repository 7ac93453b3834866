"""``kdjax merge``: merge trained members into one set of weights, each method's
hyperparameters chosen on the validation split, reported on test.

Members (``config.members``, workdirs of one architecture) and an optional base
(``config.base``: the run they were fine-tuned from) are loaded; the validation split is
carved from the training data (``config.data.val_size``; members must have held it out, as
for ``kdjax fuse``). Methods (``config.methods``, :mod:`kdjax.fusion`):

* ``average`` (uniform soup), ``align_average`` (every member permuted onto member 0 by
  :func:`~kdjax.fusion.permutation_align`, then averaged), ``fisher`` (diagonal Fisher on
  the validation inputs, sampled labels), ``regmean`` (input Grams on the validation inputs;
  grid ``config.grid.alpha``);
* with a base: ``task_arithmetic`` (``grid.scale``), ``ties`` (``grid.density`` x
  ``grid.scale``), ``dare`` (the same grid, task-arithmetic combine), ``model_stock``.

BatchNorm members: the methods merge the params (each member's data-aware statistics taken
with its own running statistics), and the merged network's running statistics are then
re-estimated on ``config.repair_examples`` training examples
(:func:`~kdjax.fusion.repair_batch_norm`, REPAIR / "resetting BatchNorm"); the
interpolation path repairs them at every point.

Writes ``WORKDIR/report.md`` and ``report.json`` (per method: chosen hyperparameters,
validation and test accuracy and NLL), and ``path.png``: test accuracy along the linear path
from member 0 to member 1, naive and after alignment (the loss barrier git re-basin removes).
"""

import itertools
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
from kdjax.programs.fuse import check_members_held_out
from kdjax.training import load_run, load_teachers

NEEDS_BASE = ("task_arithmetic", "ties", "dare", "model_stock")
METHODS = ("average", "align_average", "fisher", "regmean") + NEEDS_BASE


def _grid(config, method) -> list[dict]:
  g = config.grid
  if method == "task_arithmetic":
    return [{"scale": s} for s in g.scale]
  if method in ("ties", "dare"):
    return [{"density": d, "scale": s} for d, s in itertools.product(g.density, g.scale)]
  if method == "regmean":
    return [{"alpha": a} for a in g.alpha]
  return [{}]


def _merge(method, hp, *, stacked, states, base, model, val, seed):
  """The merged params; ``states[i]``: member i's other collections (``batch_stats``)."""
  members = ensemble.unstack(stacked)
  applies = [lambda p, x, s=s: model.apply({"params": p, **s}, x) for s in states]
  batches = [{"x": val["x"][i:i + 250], "y": val["y"][i:i + 250]}
             for i in range(0, len(val["x"]), 250)]
  if method == "average":
    return fusion.uniform_soup(stacked)
  if method == "align_average":
    spec = fusion.permutation_spec(model)
    ref = {"params": members[0], **states[0]}
    return fusion.uniform_soup(ensemble.stack([members[0]] + [
        fusion.permutation_align(ref, {"params": m, **s}, spec)["params"]
        for m, s in zip(members[1:], states[1:])]))
  if method == "fisher":
    fishers = [fusion.diagonal_fisher(applies[i], m, batches, key=jax.random.key(seed + i))
               for i, m in enumerate(members)]
    return fusion.fisher_merge(stacked, ensemble.stack(fishers))
  if method == "regmean":
    grams = ensemble.stack([fusion.input_grams(applies[i], m, batches)
                            for i, m in enumerate(members)])
    return fusion.regmean(stacked, grams, **hp)
  if method == "task_arithmetic":
    return fusion.task_arithmetic(base, stacked, **hp)
  if method == "ties":
    return fusion.ties_merge(base, stacked, **hp)
  if method == "dare":
    return fusion.dare(base, stacked, key=jax.random.key(seed), **hp)
  return fusion.model_stock(base, stacked)


def run_merge(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Merges ``config.members`` by every method of ``config.methods``; returns the report."""
  unknown = sorted(set(config.methods) - set(METHODS))
  if unknown:
    raise ValueError(f"kdjax merge: unknown method(s) {unknown}; known: {list(METHODS)}")
  if not config.data.val_size:
    raise ValueError("kdjax merge chooses hyperparameters on a validation split: set "
                     "config.data.val_size > 0 (members must have held it out)")
  needs_base = sorted(set(config.methods) & set(NEEDS_BASE))
  if needs_base and not config.base:
    raise ValueError(f"kdjax merge: method(s) {needs_base} merge task vectors and need "
                     "config.base, the run the members were fine-tuned from")
  check_members_held_out(config.members, config.data)
  splits = kd_data.load_dataset(config.data.name, **config.data.get("kwargs", {}),
                                val_size=config.data.val_size)
  groups = load_teachers(config.members, num_classes=splits["num_classes"])
  if len(groups) != 1:
    raise ValueError("kdjax merge: weight-space merging needs members of one architecture; got "
                     f"{len(groups)} architectures")
  group = groups[0]
  model, stacked = group.model, group.params
  state = {c: v for c, v in group.variables.items() if c != "params"}
  states = ensemble.unstack(state) if state else [{}] * group.size
  repair = None
  if state:
    n = int(config.get("repair_examples", 0))
    if n <= 0:
      raise ValueError("kdjax merge: BatchNorm members need training data to repair the merged "
                       "model's statistics: set config.repair_examples > 0")
    train_x = np.asarray(splits["train"]["x"][:n])
    repair_batches = [{"x": train_x[i:i + 250]} for i in range(0, len(train_x), 250)]
    mean_state = jax.tree.map(lambda a: jnp.mean(a, 0), state)
    repair = lambda p: fusion.repair_batch_norm(  # noqa: E731
        model, {"params": p, **mean_state}, repair_batches)
  base = None
  if config.base:
    base_model, base_vars, _ = load_run(config.base)
    if base_model != model:
      raise ValueError(f"kdjax merge: base {config.base!r} is another architecture than the "
                       "members")
    base = base_vars["params"]
  val, test = splits["val"], splits["test"]
  predict = jax.jit(eval_logits(model))

  def scores(params, split, variables=None):
    if variables is None:
      variables = {"params": params} if repair is None else repair(params)
    logits = predict(variables, jnp.asarray(split["x"]))
    return {"accuracy": float(metrics.accuracy(logits, split["y"])),
            "nll": float(metrics.nll(logits, split["y"]))}

  rows = {}
  for i, (p, s) in enumerate(zip(ensemble.unstack(stacked), states)):
    v = {"params": p, **s}  # a member keeps its own statistics
    rows[f"member {i}"] = {"hyper": {}, "val": scores(p, val, v), "test": scores(p, test, v)}
  for method in config.methods:
    tried = [(hp, _merge(method, hp, stacked=stacked, states=states, base=base, model=model,
                         val=val, seed=config.seed)) for hp in _grid(config, method)]
    tried = [(hp, p, scores(p, val)) for hp, p in tried]
    hp, params, val_scores = max(tried, key=lambda t: t[2]["accuracy"])
    rows[method] = {"hyper": hp, "val": val_scores, "test": scores(params, test)}
  path = (_interpolation_path(model, stacked, states, test, scores) if group.size >= 2
          else None)
  out = pathlib.Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  report = {"members": list(group.workdirs), "base": config.base or None, "rows": rows,
            "path": path, "batch_norm_repaired": repair is not None}
  (out / "report.json").write_text(json.dumps(report, indent=1))
  lines = [f"# kdjax merge: {group.size} members\n",
           f"Hyperparameters chosen on {len(val['y'])} validation examples (accuracy); test: "
           f"{len(test['y'])} examples."
           + (" BatchNorm statistics of every merged model re-estimated on "
              f"{config.repair_examples} training examples.\n" if repair is not None else "\n"),
           "| model | chosen | val accuracy | test accuracy | test NLL |", "|---|---|---|---|---|"]
  lines += [f"| {k} | {r['hyper'] or '-'} | {r['val']['accuracy']:.3f} | "
            f"{r['test']['accuracy']:.3f} | {r['test']['nll']:.3f} |" for k, r in rows.items()]
  (out / "report.md").write_text("\n".join(lines) + "\n")
  if path is not None:
    _plot_path(path, out / "path.png")
  return report


def _interpolation_path(model, stacked, states, test, scores) -> dict | None:
  members = ensemble.unstack(stacked)
  a, b = members[0], members[1]
  alphas = np.linspace(0, 1, 11)
  lerp = lambda u, v, t: jax.tree.map(lambda x, y: (1 - t) * x + t * y, u, v)  # noqa: E731
  out = {"alpha": alphas.tolist(), "naive": [scores(lerp(a, b, t), test)["accuracy"]
                                             for t in alphas]}
  try:
    aligned = fusion.permutation_align({"params": a, **states[0]}, {"params": b, **states[1]},
                                       fusion.permutation_spec(model))["params"]
  except ValueError:
    return out
  out["aligned"] = [scores(lerp(a, aligned, t), test)["accuracy"] for t in alphas]
  return out


def _plot_path(path: dict, file: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(path["alpha"], path["naive"], marker="o", label="naive")
  if "aligned" in path:
    ax.plot(path["alpha"], path["aligned"], marker="s", label="aligned (weight matching)")
  ax.set(xlabel="alpha (member 0 -> member 1)", ylabel="test accuracy",
         title="linear path between two members")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(file, dpi=90)
  plt.close(fig)
