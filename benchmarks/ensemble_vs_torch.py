"""Ensemble inference speed: ``kdjax.ensemble.apply`` against PyTorch and a JAX loop.

``M`` members (default 8) of one architecture run on the same batch (default 256), float32,
inference (BatchNorm in eval mode). Members: ``mlp`` (Hinton-ish 784-1200-1200-10) and
``resnet20`` (CIFAR, 32x32x3, 100 classes). Candidates:

* ``apply[auto|vmap|map]``: ``kdjax.ensemble.apply`` with each strategy (``auto`` is the
  default, what kdjax users get);
* ``jax_loop``: a Python loop of one jitted member call per member (params as a list),
  outputs stacked -- ``apply`` must never be slower;
* ``torch_loop``: a Python loop over ``M`` PyTorch modules under ``torch.no_grad``;
* ``torch_vmap``: ``torch.func.functional_call`` vmapped over
  ``torch.func.stack_module_state`` (the PyTorch model-ensembling recipe).

Ratios are per-round ratios (adjacent blocks) to the best PyTorch way *of that round* and
to ``jax_loop``; see ``benchmarks/_bench.py`` for the timing protocol. PyTorch is optional.

  python benchmarks/ensemble_vs_torch.py                 # about 3 min quiet
  python benchmarks/ensemble_vs_torch.py --models mlp --reps 9
  python benchmarks/ensemble_vs_torch.py --quick --out-dir /tmp/x

Writes ``ensemble_vs_torch.{json,md,png}`` to ``benchmarks/results/`` (or ``--out-dir``).
"""

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402

from kdjax import ensemble  # noqa: E402
from kdjax.models import get_model  # noqa: E402

MODELS = {"mlp": dict(name="mlp", kw={"hidden": (1200, 1200)}, shape=(784,), classes=10),
          "resnet20": dict(name="resnet20", kw={}, shape=(32, 32, 3), classes=100)}
QUICK = {"mlp": dict(name="mlp", kw={"hidden": (32, 32)}, shape=(20,), classes=10),
         "resnet20": dict(name="resnet8", kw={}, shape=(32, 32, 3), classes=10)}


def make_members(spec, members, torch, seed=0):
  """``(model, [variables] * M, [torch modules] * M or None)`` with equal weights.

  MLP members are initialised by Flax and copied into ``torch.nn.Linear`` layers; ResNet
  members are initialised by PyTorch (the test suite's reference models) and converted
  with ``kdjax.convert.torch_state_dict``.
  """
  model = get_model(spec["name"], num_classes=spec["classes"], **spec["kw"])
  x1 = jnp.zeros((1, *spec["shape"]), jnp.float32)
  if spec["name"] != "mlp" and torch is not None:
    from kdjax.convert import torch_state_dict
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "tests"))
    from torch_models import build
    torch.manual_seed(seed)
    nets = [build(spec["name"], spec["classes"]) for _ in range(members)]
    variables = [torch_state_dict(spec["name"], n.state_dict(), num_classes=spec["classes"],
                                  input_shape=spec["shape"]) for n in nets]
    return model, variables, [_logits_only(n).eval() for n in nets]
  variables = [model.init(jax.random.key(seed + i), x1) for i in range(members)]
  if torch is None:
    return model, variables, None
  nets = []
  for v in variables:
    dims = [int(np.prod(spec["shape"])), *spec["kw"]["hidden"], spec["classes"]]
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
      lin = torch.nn.Linear(a, b)
      name = "head" if i == len(dims) - 2 else f"dense_{i}"
      lin.weight.data = torch.as_tensor(np.asarray(v["params"][name]["kernel"]).T.copy())
      lin.bias.data = torch.as_tensor(np.array(v["params"][name]["bias"]))
      layers += [lin, torch.nn.ReLU()]
    nets.append(torch.nn.Sequential(*layers[:-1]).eval())
  return model, variables, nets


def inputs(spec, batch, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, *spec["shape"])).astype(np.float32)


def jax_candidates(model, variables, x, calls):
  x = jnp.asarray(x)
  stacked = ensemble.stack(variables)
  apply_fn = _apply_fn(model)
  member = jax.jit(apply_fn)

  def jax_loop():
    return jnp.stack([member(v, x) for v in variables])

  fns = {f"apply[{s}]": (lambda s=s: ensemble.apply(apply_fn, stacked, x, strategy=s))
         for s in ("auto", "vmap", "map")}
  fns["jax_loop"] = jax_loop
  ref = np.asarray(jax_loop())
  for k, f in fns.items():  # compile, and check that every way computes the same
    np.testing.assert_allclose(np.asarray(f()), ref, rtol=1e-4, atol=1e-4, err_msg=k)
  return {k: _repeat(f, calls, jax.block_until_ready) for k, f in fns.items()}, ref


_APPLY_FNS = {}


def _apply_fn(model):  # one object per model: a static jit argument of ensemble.apply
  if model not in _APPLY_FNS:
    _APPLY_FNS[model] = lambda v, x: model.apply(v, x, train=False)
  return _APPLY_FNS[model]


def _repeat(f, calls, sync):
  def run():
    for _ in range(calls):
      out = f()
    sync(out)
  return run


def torch_candidates(nets, x, calls, ref):
  import torch
  from torch.func import functional_call, stack_module_state
  xt = torch.as_tensor(x if x.ndim == 2 else x.transpose(0, 3, 1, 2).copy())
  params, buffers = stack_module_state(nets)
  base = nets[0]

  def one(p, b, x):
    return functional_call(base, (p, b), (x,))

  vm = torch.func.vmap(one, in_dims=(0, 0, None))

  def torch_loop():
    with torch.no_grad():
      return torch.stack([n(xt) for n in nets])

  def torch_vmap():
    with torch.no_grad():
      return vm(params, buffers, xt)

  fns = {"torch_loop": torch_loop, "torch_vmap": torch_vmap}
  for k, f in fns.items():  # the same numbers as kdjax
    np.testing.assert_allclose(f().numpy(), ref, rtol=1e-3, atol=1e-3, err_msg=k)
  return {k: _repeat(f, calls, lambda out: None) for k, f in fns.items()}


@functools.cache
def _logits_only_class():
  import torch

  class LogitsOnly(torch.nn.Module):
    """A reference model whose forward returns ``(logits, features)``: logits only."""

    def __init__(self, net):
      super().__init__()
      self.net = net

    def forward(self, x):
      return self.net(x)[0]

  return LogitsOnly


def _logits_only(net):
  return _logits_only_class()(net)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
  parser.add_argument("--members", type=int, default=8)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--quick", action="store_true", help="tiny members, batch 8, 2 rounds")
  parser.add_argument("--out-dir", default=_bench.RESULTS_DIR)
  args = parser.parse_args(argv)
  specs = QUICK if args.quick else MODELS
  if args.quick:
    args.batch, args.reps, args.members = 8, 2, 3
  torch = None if args.no_torch else _bench.torch_or_none()
  if torch is not None:
    torch.set_num_threads(os.cpu_count())
  rows, loads = [], []
  for name in args.models:
    spec = specs[name]
    calls = 1 if (name == "resnet20" and not args.quick) else 5
    model, variables, nets = make_members(spec, args.members, torch)
    x = inputs(spec, args.batch)
    cands, ref = jax_candidates(model, variables, x, calls)
    if nets is not None:
      cands.update(torch_candidates(nets, x, calls, ref))
    timed = _bench.interleaved(cands, args.reps)
    loads += timed["load"]
    sec = {k: np.asarray(v) / calls for k, v in timed["seconds"].items()}
    torch_keys = [k for k in sec if k.startswith("torch")]
    best_torch = np.min([sec[k] for k in torch_keys], axis=0) if torch_keys else None
    for impl, ts in sec.items():
      row = {"model": name, "members": args.members, "batch": args.batch, "impl": impl,
             "samples_per_s": _bench.spread(args.batch / ts), "call_ms": _bench.spread(ts * 1e3),
             "vs_jax_loop": _bench.paired_ratio(ts, sec["jax_loop"]), "load": timed["load"]}
      if best_torch is not None:
        row["vs_best_torch"] = _bench.paired_ratio(ts, best_torch)
      rows.append(row)
  meta = _bench.machine_meta(load=loads, members=args.members, batch=args.batch,
                             reps=args.reps, quick=args.quick,
                             auto_strategy=ensemble.choose_strategy(None, None, None))
  header = ["members", "impl", "samples/s median (p25-p75)", "ms/call", "x best PyTorch",
            "x jax_loop"]
  body = []
  for r in rows:
    s, c = r["samples_per_s"], r["call_ms"]
    vt = r.get("vs_best_torch")
    lo = [x for pair in r["load"] for x in pair]
    body.append([f"{r['members']} x {r['model']} (load {min(lo):.1f}-{max(lo):.1f})", r["impl"],
                 f"{s['median']:,.0f} ({s['p25']:,.0f}-{s['p75']:,.0f})", f"{c['median']:.1f}",
                 f"{vt['median']:.2f} ({vt['p25']:.2f}-{vt['p75']:.2f})" if vt else "",
                 f"{r['vs_jax_loop']['median']:.2f}"])
  table = (f"Ensemble inference, batch {args.batch}, {_bench.meta_line(meta)}, "
           f"{args.reps} rounds\n\n" + _bench.markdown_table(header, body))

  def plot(ax):
    labels = [f"{r['model']}\n{r['impl']}" for r in rows]
    ax.barh(range(len(rows)), [r["samples_per_s"]["median"] for r in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("samples/s (median)")
    ax.set_title(f"{args.members}-member ensembles, " + _bench.meta_line(meta), fontsize=8)

  _bench.write_outputs("ensemble_vs_torch", {"meta": meta, "rows": rows}, table,
                       args.out_dir, plot)
  return rows


if __name__ == "__main__":
  main()
