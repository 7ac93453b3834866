"""The data position in an orbax checkpoint: a run stopped and resumed from its checkpoint
ends with the parameters of an uninterrupted run, bit for bit.

This is the loop the trainer needs (scan over ``steps_per_call`` steps a call, blocks
from the prefetcher, state + data position saved together), at toy size.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from kdjax import data

STEPS_PER_CALL = 2


def _pipeline():
  source = data.SyntheticSource(40, (8, 8, 3), num_classes=5, seed=0)
  return data.make_pipeline(source, batch_size=8, seed=1, train=True, num_classes=5,
                            image_size=8, mean=(0.5,) * 3, std=(0.25,) * 3,
                            augment="pad_crop_flip", mixup_alpha=0.5, process_index=0,
                            process_count=1)


def _make_chunk(tx):
  def loss_fn(params, batch):
    logits = batch["x"].reshape(batch["x"].shape[0], -1) @ params["w"] + params["b"][None, :]
    return optax.losses.softmax_cross_entropy(logits, batch["label_probs"]).mean()

  @jax.jit
  def chunk(params, opt_state, block):
    def step(carry, batch):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, batch)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), block)
    return params, opt_state, losses
  return chunk


def _train(workdir, *, start_fresh: bool, stop_after: int | None, total_chunks: int = 6):
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  tx = optax.sgd(0.1, momentum=0.9)
  chunk = _make_chunk(tx)
  params = {"w": jnp.zeros((192, 5)), "b": jnp.zeros(5)}
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.device_put({"params": params, "opt": tx.init(params)}, replicated)
  manager = ocp.CheckpointManager(workdir, options=ocp.CheckpointManagerOptions(create=True))
  done, data_state = 0, None
  if not start_fresh and manager.latest_step() is not None:
    done = manager.latest_step()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(done, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    state, data_state = restored.state, restored.data
  block_keys = ("x", "label_probs")
  with data.DevicePrefetcher(_pipeline().iterator(data_state), mesh=mesh, buffer_size=2,
                             steps_per_call=STEPS_PER_CALL) as blocks:
    while done < total_chunks:
      block = next(blocks)
      state["params"], state["opt"], _ = chunk(state["params"], state["opt"],
                                               {k: block[k] for k in block_keys})
      done += 1
      manager.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 data=ocp.args.JsonSave(blocks.get_state())))
      if stop_after is not None and done == stop_after:
        break  # the "kill": everything in memory is dropped
  manager.wait_until_finished()
  manager.close()
  return jax.device_get(state["params"])


def test_resume_from_an_orbax_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
  uninterrupted = _train(tmp_path / "a", start_fresh=True, stop_after=None)
  _train(tmp_path / "b", start_fresh=True, stop_after=3)  # stopped mid-epoch (5 steps an epoch)
  resumed = _train(tmp_path / "b", start_fresh=False, stop_after=None)
  for key in ("w", "b"):
    np.testing.assert_array_equal(resumed[key], uninterrupted[key])
  assert np.abs(uninterrupted["w"]).sum() > 0
