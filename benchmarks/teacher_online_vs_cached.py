"""KD with the teacher run online in every step vs teacher targets cached once.

On MNIST-1D (4,000 train / 1,000 test, generated locally), a CNN1D teacher (channels
128-128-128, trained here with cross-entropy) is distilled into the paper's MLP 40-100-100-10
(Hinton loss, T = 4, alpha = 0.9, Adam 1e-2, batch 100: one epoch = 40 steps = one jitted
``make_train_chunk`` call, as ``kdjax train`` runs it). Two students start from the same
init and see the same batches:

* ``online``: the teacher forward runs inside every step (``teacher.cache = False``);
* ``cached``: the teacher's logits for the whole training set are computed once (timed
  separately as ``cache_build``) and each batch carries its rows (``teacher.cache = True``,
  possible because the inputs are not augmented).

Reported: seconds per epoch (median and spread over interleaved epochs), the one-off cache
cost, and test accuracy of teacher and both students after ``--epochs`` epochs. Without
augmentation both compute the same loss, so the accuracies should agree up to float
rounding; the speed difference is the teacher's forward.

  python benchmarks/teacher_online_vs_cached.py              # about 1-2 min quiet
  python benchmarks/teacher_online_vs_cached.py --quick --out-dir /tmp/x

Writes ``teacher_online_vs_cached.{json,md,png}`` to ``benchmarks/results/`` (or ``--out-dir``).
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402

from kdjax import data as kd_data  # noqa: E402
from kdjax import losses  # noqa: E402
from kdjax.models import get_model  # noqa: E402
from kdjax.training import (create_train_state, frozen_teacher_apply,  # noqa: E402
                            make_optimizer, make_predict, make_train_chunk,
                            predict_in_batches)

BATCH = 100


def _tx(steps):
  return make_optimizer(ml_collections.ConfigDict(
      {"name": "adam", "learning_rate": 1e-2, "schedule": "constant"}), steps)


def _epoch_batches(x, y, epoch, steps, extra=None):
  idx = kd_data.batch_indices(len(x), batch_size=BATCH, start_step=epoch * steps,
                              num_steps=steps, seed=0)
  out = {"x": jnp.asarray(x[idx]), "y": jnp.asarray(y[idx])}
  if extra is not None:
    out["teacher_logits"] = jnp.asarray(extra[idx])
  return out


def _accuracy(model, variables, x, y):
  logits = predict_in_batches(make_predict(model), variables, x, batch_size=500)
  return float(np.mean(np.argmax(logits, -1) == y))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=30, help="KD epochs of each student")
  parser.add_argument("--teacher-epochs", type=int, default=40)
  parser.add_argument("--quick", action="store_true", help="2 epochs, a small teacher")
  parser.add_argument("--out-dir", default=_bench.RESULTS_DIR)
  args = parser.parse_args(argv)
  channels = (16, 16, 16) if args.quick else (128, 128, 128)
  if args.quick:
    args.epochs, args.teacher_epochs = 2, 2

  splits = kd_data.load_dataset("mnist1d")
  xtr, ytr = splits["train"]["x"], splits["train"]["y"]
  xte, yte = splits["test"]["x"], splits["test"]["y"]
  steps = len(xtr) // BATCH
  teacher = get_model("cnn1d", channels=channels)
  student = get_model("mlp", hidden=(100, 100))

  # Teacher: cross-entropy, the same chunked step.
  ce = losses.make_objective([("cross_entropy", 1.0, {})])
  t_tx = _tx(args.teacher_epochs * steps)
  t_state = create_train_state(teacher, t_tx, jnp.asarray(xtr[:BATCH]), rng=jax.random.key(1))
  t_chunk = make_train_chunk(model=teacher, objective=ce, tx=t_tx)
  for e in range(args.teacher_epochs):
    t_state, _ = t_chunk(t_state, _epoch_batches(xtr, ytr, e, steps))
  t_vars = {"params": t_state.params["student"], **t_state.model_state}
  teacher_acc = _accuracy(teacher, t_vars, xte, yte)

  # Students.
  kd = losses.make_objective([("hinton_kd", 1.0, {"temperature": 4.0, "alpha": 0.9})])
  tx = _tx(args.epochs * steps)
  online = make_train_chunk(model=student, objective=kd, tx=tx,
                            teacher_apply=frozen_teacher_apply(teacher))
  cached = make_train_chunk(model=student, objective=kd, tx=tx)
  predict_t = make_predict(teacher)
  predict_in_batches(predict_t, t_vars, xtr, batch_size=1000)  # compile
  t0 = time.perf_counter()
  cache = predict_in_batches(predict_t, t_vars, xtr, batch_size=1000)
  cache_s = time.perf_counter() - t0

  states = {k: create_train_state(student, tx, jnp.asarray(xtr[:BATCH]), rng=jax.random.key(2))
            for k in ("online", "cached")}
  seconds = {"online": [], "cached": []}
  load = []
  for e in range(args.epochs):  # interleaved: one epoch of each in turn
    before = os.getloadavg()[0]
    plain = _epoch_batches(xtr, ytr, e, steps)
    with_targets = _epoch_batches(xtr, ytr, e, steps, cache)
    for k, fn, batches, tv in (("online", online, plain, t_vars),
                               ("cached", cached, with_targets, None)):
      t0 = time.perf_counter()
      states[k], m = fn(states[k], batches, tv)
      jax.block_until_ready((states[k], m))
      seconds[k].append(time.perf_counter() - t0)
    load.append((before, os.getloadavg()[0]))
  timed = {k: v[1:] or v for k, v in seconds.items()}  # epoch 0 includes compilation
  acc = {k: _accuracy(student, {"params": s.params["student"], **s.model_state}, xte, yte)
         for k, s in states.items()}

  meta = _bench.machine_meta(load=load, epochs=args.epochs, teacher_epochs=args.teacher_epochs,
                             teacher_channels=channels, batch=BATCH, steps_per_epoch=steps,
                             quick=args.quick, seed=0)
  rows = []
  for k in ("online", "cached"):
    rows.append({"impl": k, "epoch_s": _bench.spread(timed[k]),
                 "speedup_vs_online": _bench.paired_ratio(timed[k], timed["online"]),
                 "test_accuracy": acc[k]})
  payload = {"meta": meta, "rows": rows, "teacher_test_accuracy": teacher_acc,
             "cache_build_s": cache_s}
  body = [[r["impl"], f"{r['epoch_s']['median'] * 1e3:.1f} ({r['epoch_s']['p25'] * 1e3:.1f}-"
           f"{r['epoch_s']['p75'] * 1e3:.1f})", f"{r['speedup_vs_online']['median']:.2f}x",
           f"{100 * r['test_accuracy']:.1f}%"] for r in rows]
  table = (f"MNIST-1D KD, CNN1D{channels} teacher ({100 * teacher_acc:.1f}% test) -> MLP "
           f"40-100-100-10, {args.epochs} epochs of {steps} steps, {_bench.meta_line(meta)}; "
           f"building the cache once: {cache_s * 1e3:.1f} ms\n\n"
           + _bench.markdown_table(["teacher", "ms per epoch median (p25-p75)",
                                    "speed vs online", "student test accuracy"], body))

  def plot(ax):
    for k in ("online", "cached"):
      ax.plot(np.asarray(seconds[k]) * 1e3, marker="o", label=f"{k} ({100 * acc[k]:.1f}%)")
    ax.set_xlabel("epoch (0 includes compilation)")
    ax.set_ylabel("ms per epoch")
    ax.set_yscale("log")
    ax.set_title("KD epoch, online teacher vs cached targets, " + _bench.meta_line(meta),
                 fontsize=8)
    ax.legend()

  _bench.write_outputs("teacher_online_vs_cached", payload, table, args.out_dir, plot)
  return payload


if __name__ == "__main__":
  main()
