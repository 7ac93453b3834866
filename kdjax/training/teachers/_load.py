"""Frozen teachers: from their workdirs (one model, or an ensemble of groups), or from a
params file kdjax did not write plus a model spec.

A teacher workdir is any finished (or checkpointed) ``kdjax train`` run: its
``config.json`` rebuilds the model, its latest checkpoint gives the variables (params
and BatchNorm statistics). Teachers of one architecture are stacked (a leading member
axis) and run as one call, always in eval mode.

Files kdjax did not write (orbax, flax msgpack, PyTorch): ``config.teacher.params_file`` names the file and ``config.teacher.model`` the
architecture (``{"name": registry name, **fields}``):

* a directory: an orbax checkpoint of a pytree (``ocp.StandardCheckpointer().save``);
* ``*.msgpack``: ``flax.serialization.to_bytes(variables)`` (read back with
  ``flax.serialization.msgpack_restore``, no target needed);
* ``*.pth`` / ``*.pt``: a PyTorch ``state_dict`` (or a dict holding one under
  ``"model"``, ``"state_dict"`` or ``"net"``, as RepDistiller and mdistiller save them),
  read by :func:`kdjax.convert.load_pth` and converted by
  :func:`kdjax.convert.torch_state_dict` for that architecture name (PyTorch needed).

The tree read is either the full variables ``{"params": ..., "batch_stats": ...}`` or
the params alone. Either way it is checked against the model's own variables (every
path and shape) before training starts.
"""

import dataclasses
import json
import pathlib
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from kdjax.models import as_model, eval_logits, get_model
from kdjax.training._checkpoint import load_variables


def hf_decoder_config(hf_path: str, num_classes: int, *, field: str) -> dict:
  """``{"name": "decoder", **fields}`` of a Hugging Face folder's ``config.json``.

  Raises:
    ValueError: if the data's ``num_classes`` tokens do not fit its vocabulary.
  """
  from kdjax import convert
  fields = convert.decoder_fields(convert.read_config(hf_path),
                                  file=f"{field}={hf_path!r}: config.json")
  if num_classes > fields["num_classes"]:
    raise ValueError(f"{field}={hf_path!r}: vocab_size {fields['num_classes']} is smaller than "
                     f"the data's {num_classes} token ids")
  return {"name": "decoder", **fields}


def model_from_config(model_config: dict, num_classes: int) -> nn.Module:
  """``get_model(name, num_classes=..., **other fields)`` from a ``config.model`` dict;
  ``{"name": "decoder", "hf_path": DIR}`` is the decoder of a Hugging Face folder (its
  ``config.json``: :func:`kdjax.convert.from_hf`), whose vocabulary size is its own."""
  fields = dict(model_config)
  if fields.get("hf_path"):
    extra = sorted(set(fields) - {"name", "hf_path"})
    if fields.get("name") != "decoder" or extra:
      raise ValueError(f"config.model.hf_path={fields['hf_path']!r} gives the whole model; set "
                       f"config.model.name='decoder' and no other fields (got name "
                       f"{fields.get('name')!r}, fields {extra})")
    fields = hf_decoder_config(fields["hf_path"], num_classes, field="config.model.hf_path")
    num_classes = fields.pop("num_classes")
  fields.pop("hf_path", None)
  name = fields.pop("name")
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  if name == "decoder" and "num_classes" in fields:  # a run.json of a distilled decoder
    num_classes = fields.pop("num_classes")
  return get_model(name, num_classes=num_classes, **fields)


def student_from_config(model_config: dict, num_classes: int) -> tuple[Any, dict]:
  """``(model, model_info)`` of ``config.model``: the registry model, or with ``hf_path``
  a :class:`kdjax.models.PretrainedModel` starting from the checkpoint's weights.
  ``model_info`` is what ``run.json`` records to rebuild it (a Hugging Face student as
  ``{"name": "decoder", **its fields}``, so its workdir is a teacher without the folder)."""
  model_config = dict(model_config)
  if not model_config.get("hf_path"):
    return model_from_config(model_config, num_classes), model_config
  from kdjax import convert
  from kdjax.models import PretrainedModel
  model = model_from_config(model_config, num_classes)  # checks the fields and vocabulary
  _, variables = convert.from_hf(model_config["hf_path"], dtype=None)
  info = {"name": "decoder", **{k: getattr(model, k) for k in convert.decoder_fields(
      convert.read_config(model_config["hf_path"]))}}
  return PretrainedModel(model, variables), info


def load_run(workdir: str | pathlib.Path) -> tuple[nn.Module, Any, dict]:
  """``(model, variables, run_info)`` of a trained run; ``variables`` is
  ``{"params": ..., **model state}`` (e.g. ``"batch_stats"``).

  Raises:
    FileNotFoundError: if the workdir, its ``run.json`` or a checkpoint is missing.
  """
  path = pathlib.Path(workdir)
  if not path.is_dir():
    raise FileNotFoundError(f"Workdir {str(workdir)!r} does not exist (expected a `kdjax train` run)")
  info_path = path / "run.json"
  if not info_path.exists():
    raise FileNotFoundError(f"{info_path} is missing: {str(workdir)!r} is not a kdjax run")
  info = read_run_info(info_path)
  model = model_from_config(info["model"], info["num_classes"])
  return model, load_variables(path), info


@dataclasses.dataclass(frozen=True)
class TeacherGroup:
  """Members of one architecture: ``variables`` leaves carry a leading member axis."""

  model: nn.Module
  variables: Any  # {"params": ..., **model state}, stacked
  workdirs: tuple[str, ...]  # or the params file
  indices: tuple[int, ...]  # positions of these members in the teacher list given by the user

  @property
  def size(self) -> int:
    return len(self.workdirs)

  @property
  def params(self) -> Any:
    """The stacked params alone (for soups and weight losses)."""
    return self.variables["params"]


def parse_workdirs(spec: str | tuple | list) -> list[str]:
  """Teacher workdirs from a comma-separated string (CLI friendly) or a sequence."""
  items = spec.split(",") if isinstance(spec, str) else list(spec)
  return [s.strip() for s in items if s and s.strip()]


def load_teachers(spec, *, num_classes: int) -> list[TeacherGroup]:
  """Loads every teacher workdir and stacks members by architecture.

  Raises:
    ValueError: if no workdir is given, or a teacher's number of classes differs
      from ``num_classes`` (the student's).
  """
  from kdjax import ensemble

  workdirs = parse_workdirs(spec)
  if not workdirs:
    raise ValueError("The objective needs a teacher but config.teacher.workdir is empty; "
                     "pass --config.teacher.workdir=DIR (comma-separate several for an ensemble)")
  groups: dict[str, list] = {}
  for index, workdir in enumerate(workdirs):
    model, variables, info = load_run(workdir)
    if info["num_classes"] != num_classes:
      raise ValueError(f"Teacher {workdir!r} predicts {info['num_classes']} classes but the "
                       f"student has {num_classes}")
    key = json.dumps(info["model"], sort_keys=True)
    groups.setdefault(key, []).append((model, variables, workdir, index))
  return [TeacherGroup(model=members[0][0],
                       variables=ensemble.stack([m[1] for m in members]),
                       workdirs=tuple(m[2] for m in members),
                       indices=tuple(m[3] for m in members))
          for members in groups.values()]


def load_teacher_groups(teacher_config, *, num_classes: int, sample_x) -> list[TeacherGroup]:
  """Teachers from ``config.teacher``: ``params_file`` + ``model`` (one teacher from a
  file kdjax did not write, see :mod:`kdjax.training.teachers._load`), or ``workdir``.

  Raises:
    ValueError: if both or neither are given, or ``model.name`` is missing.
  """
  params_file = teacher_config.params_file
  if teacher_config.hf_path:
    given = [f for f in ("workdir", "params_file") if teacher_config[f]]
    if given:
      raise ValueError(f"Set config.teacher.hf_path or config.teacher.{given[0]}, not both")
    return [hf_teacher(teacher_config.hf_path, num_classes=num_classes)]
  if not params_file:
    return load_teachers(teacher_config.workdir, num_classes=num_classes)
  if teacher_config.workdir:
    raise ValueError("Set config.teacher.workdir or config.teacher.params_file, not both "
                     f"(got {teacher_config.workdir!r} and {params_file!r})")
  spec = teacher_config.model.to_dict() if hasattr(teacher_config.model, "to_dict") else dict(
      teacher_config.model)
  if not spec.get("name"):
    raise ValueError(f"config.teacher.params_file={params_file!r} needs the architecture: set "
                     "config.teacher.model.name (a kdjax.models registry name) and its fields")
  model = model_from_config(spec, num_classes)
  variables = load_teacher_file(params_file, model, sample_x, model_name=spec["name"],
                                num_classes=num_classes)
  return [TeacherGroup(model=model, variables=jax.tree.map(lambda a: a[None], variables),
                       workdirs=(str(params_file),), indices=(0,))]


def hf_teacher(hf_path: str, *, num_classes: int) -> TeacherGroup:
  """A Hugging Face causal LM (``config.teacher.hf_path``) as a one-member group; its
  params keep the checkpoint's dtype (``bfloat16`` stays ``bfloat16``)."""
  from kdjax import convert
  hf_decoder_config(hf_path, num_classes, field="config.teacher.hf_path")  # the vocabulary
  model, variables = convert.from_hf(hf_path, dtype=None)
  return TeacherGroup(model=model, variables=jax.tree.map(lambda a: a[None], variables),
                      workdirs=(str(hf_path),), indices=(0,))


def single_teacher(groups: list[TeacherGroup]) -> tuple[nn.Module, Any]:
  """The one teacher's ``(model, variables)``; an error for ensembles."""
  if len(groups) != 1 or groups[0].size != 1:
    raise ValueError("Feature- and weight-based losses need a single teacher; got an ensemble of "
                     f"{sum(g.size for g in groups)} members")
  group = groups[0]
  return group.model, jax.tree.map(lambda leaf: leaf[0], group.variables)


_TORCH_SUFFIXES = (".pth", ".pt")
_MSGPACK_SUFFIXES = (".msgpack", ".flax")


def _read_torch(path: pathlib.Path, name: str, num_classes: int, input_shape) -> dict:
  from kdjax import convert  # PyTorch itself is imported by load_pth, lazily

  state_dict = convert.load_pth(str(path))
  return convert.torch_state_dict(name, state_dict, num_classes=num_classes,
                                  input_shape=tuple(input_shape))


def read_variables_file(path: str | pathlib.Path, *, model_name: str = "", num_classes: int = 0,
                        input_shape=(32, 32, 3)) -> dict[str, Any]:
  """The pytree stored in ``path`` (see the module docstring for the formats).

  Raises:
    FileNotFoundError: if ``path`` does not exist.
    ValueError: for a file of an unknown kind.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"teacher.params_file {str(path)!r} does not exist")
  if path.is_dir():
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(path.absolute())
  if path.suffix in _MSGPACK_SUFFIXES:
    return flax.serialization.msgpack_restore(path.read_bytes())
  if path.suffix in _TORCH_SUFFIXES:
    return _read_torch(path, model_name, num_classes, input_shape)
  raise ValueError(f"teacher.params_file {str(path)!r}: unknown format; expected an orbax "
                   f"checkpoint directory, {'/'.join(_MSGPACK_SUFFIXES)} (flax msgpack) or "
                   f"{'/'.join(_TORCH_SUFFIXES)} (PyTorch state_dict)")


def check_variables(tree: Any, expected: Any, *, source: str) -> dict[str, Any]:
  """``tree`` as variables matching ``expected`` (shape/dtype structs), cast to their dtypes.

  ``tree`` is either full variables (with a ``"params"`` key) or the params alone.

  Raises:
    ValueError: naming the missing, unexpected or mis-shaped paths.
  """
  variables = dict(tree) if isinstance(tree, dict) and "params" in tree else {"params": tree}
  got = traverse_util.flatten_dict(variables, sep="/")
  want = traverse_util.flatten_dict(dict(expected), sep="/")
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  wrong = [f"{k}: file {tuple(np.shape(got[k]))} vs model {tuple(want[k].shape)}"
           for k in sorted(set(got) & set(want)) if tuple(np.shape(got[k])) != tuple(want[k].shape)]
  if missing or extra or wrong:
    parts = [f"missing {missing[:5]}" if missing else "",
             f"unexpected {extra[:5]}" if extra else "",
             f"shape mismatch {wrong[:5]}" if wrong else ""]
    raise ValueError(f"{source} does not fit the teacher model: "
                     + "; ".join(p for p in parts if p))
  # Through NumPy: arrays restored onto one device must not stay committed to it.
  flat = {k: jnp.asarray(np.asarray(got[k], dtype=want[k].dtype)) for k in want}
  return traverse_util.unflatten_dict(flat, sep="/")


def load_teacher_file(path: str | pathlib.Path, module: Any, sample_x: Any, *, model_name: str,
                      num_classes: int) -> dict[str, Any]:
  """Variables of ``module`` read from ``path`` and checked against its own init."""
  expected = jax.eval_shape(lambda: as_model(module).init(jax.random.key(0), sample_x))
  tree = read_variables_file(path, model_name=model_name, num_classes=num_classes,
                             input_shape=sample_x.shape[1:])
  return check_variables(tree, expected, source=f"teacher.params_file {str(path)!r}")


def read_run_info(path: pathlib.Path) -> dict:
  """A teacher's ``run.json``; an unreadable or damaged file names its path."""
  try:
    return json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}); is this a kdjax "
                     "run that finished writing?") from None


def check_same_vocabulary(student: Any, groups, sample_x, *, student_source: str = "",
                          teacher_source: str = "") -> None:
  """A language-model teacher and student predict the same vocabulary: equal logit widths
  (from shapes only) and, where both folders hold a ``tokenizer.json``, equal vocabularies.

  Raises:
    ValueError: naming both sides' sizes or tokenizer files.
  """
  spec = jax.ShapeDtypeStruct(sample_x.shape, sample_x.dtype)
  model = as_model(student)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), spec))
  width = jax.eval_shape(eval_logits(model), variables, spec).shape[-1]
  for group in groups:
    member = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype),
                          group.variables)
    t_width = jax.eval_shape(eval_logits(group.model), member, spec).shape[-1]
    if t_width != width:
      raise ValueError(f"Teacher {', '.join(group.workdirs)} predicts a vocabulary of {t_width} "
                       f"tokens but the student {width}; distillation over tokens needs the same "
                       "vocabulary (cross-tokenizer distillation is not supported)")
  files = [pathlib.Path(p) / "tokenizer.json" for p in (student_source, teacher_source) if p]
  if len(files) == 2 and all(f.is_file() for f in files):
    vocabs = [json.loads(f.read_text()).get("model", {}).get("vocab") for f in files]
    if vocabs[0] != vocabs[1]:
      raise ValueError(f"Tokenizers differ: {files[0]} and {files[1]} map tokens to other ids; "
                       "teacher and student must share the vocabulary")


def check_teachers_take(groups, sample_x) -> None:
  """Each teacher group must accept the student's inputs (checked on shapes only,
  with ``jax.eval_shape``; nothing is computed).

  Raises:
    ValueError: naming the teacher workdirs and the input shape.
  """
  spec = jax.ShapeDtypeStruct(sample_x.shape, sample_x.dtype)
  for group in groups:
    variables = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype),
                             group.variables)  # one member: drop the member axis
    try:
      jax.eval_shape(eval_logits(group.model), variables, spec)
    except Exception as e:  # flax raises shape errors of several types
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ValueError(f"Teacher {', '.join(group.workdirs)} cannot take the student's inputs "
                       f"of shape {tuple(sample_x.shape[1:])} per example ({first}); was it "
                       "trained on another data set?") from None
