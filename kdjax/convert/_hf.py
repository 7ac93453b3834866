"""Hugging Face causal LMs in and out: a local folder's ``config.json`` + ``*.safetensors``
as a :class:`kdjax.models.Decoder` and its variables, and back.

Reading needs ``safetensors`` only (no PyTorch): tensors are read onto the host CPU
(``bfloat16`` kept), a sharded checkpoint through its ``model.safetensors.index.json``.
Architectures: ``LlamaForCausalLM`` (Llama 3.x: grouped-query attention, ``llama3`` RoPE
scaling, tied or untied head), ``Qwen2ForCausalLM`` (q/k/v biases), ``Qwen3ForCausalLM``
(q/k norms), ``Gemma2ForCausalLM`` and ``Gemma3ForCausalLM`` (``(1 + w)`` norms, sandwich
norms, scaled embeddings, soft-capping, local/global layers with their own RoPE). The
config fields read are those of ``transformers`` 4.4x and 5.x (``rope_scaling`` +
``rope_theta``, or ``rope_parameters``, per layer type for Gemma 3).

Weights: a Hugging Face ``Linear.weight [out, in]`` is a flax ``Dense`` ``kernel [in, out]``;
the embedding ``[V, D]`` is kept as it is.
"""

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from kdjax.models._decoder import Decoder

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
                 "Qwen3ForCausalLM": "qwen3", "Gemma2ForCausalLM": "gemma2",
                 "Gemma3ForCausalLM": "gemma3"}
MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
               "gemma3_text": "gemma3"}
_EXPORT = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2"),
           "qwen3": ("Qwen3ForCausalLM", "qwen3"), "gemma2": ("Gemma2ForCausalLM", "gemma2"),
           "gemma3": ("Gemma3ForCausalLM", "gemma3_text")}
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}
_IGNORED = ("rotary_emb.inv_freq",)  # buffers some exports carry


class HFFormatError(ValueError):
  """A Hugging Face folder kdjax cannot read (the message names the file and the field)."""


def read_config(path: str | pathlib.Path) -> dict[str, Any]:
  """The ``config.json`` of a local Hugging Face model folder."""
  file = pathlib.Path(path) / "config.json"
  if not file.is_file():
    raise HFFormatError(f"{file} is missing: {str(path)!r} is not a Hugging Face model folder")
  try:
    return json.loads(file.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise HFFormatError(f"{file} cannot be read ({type(e).__name__}: {e})") from None


def _family(cfg: dict, file: str) -> str:
  archs = cfg.get("architectures") or []
  for arch in archs:
    if arch in ARCHITECTURES:
      return ARCHITECTURES[arch]
  if archs:
    raise HFFormatError(f"{file}: architectures {archs} is not a supported causal LM; "
                        f"supported: {sorted(ARCHITECTURES)}")
  if cfg.get("model_type") in MODEL_TYPES:
    return MODEL_TYPES[cfg["model_type"]]
  raise HFFormatError(f"{file}: model_type {cfg.get('model_type')!r} is not a supported causal "
                      f"LM; supported: {sorted(MODEL_TYPES)}")


def _rope(cfg: dict, layer_type: str, file: str) -> dict[str, Any]:
  """``{"theta", "type", **scaling}`` of one layer type (``full_attention`` or
  ``sliding_attention``), from ``rope_parameters`` (5.x) or ``rope_scaling``/``rope_theta``."""
  params = cfg.get("rope_parameters")
  if isinstance(params, dict) and layer_type in params:
    params = params[layer_type]
  if isinstance(params, dict) and params.get("rope_theta") is not None:
    theta = params["rope_theta"]
  else:
    params = cfg.get("rope_scaling") or {}
    theta = cfg.get("rope_theta", 10_000.0)
    if layer_type == "sliding_attention" and cfg.get("rope_local_base_freq"):
      params, theta = {}, cfg["rope_local_base_freq"]
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type not in ("default", "linear", "llama3"):
    raise HFFormatError(f"{file}: rope type {rope_type!r} is not supported (default, linear, "
                        "llama3)")
  return {"theta": float(theta), "type": rope_type, "factor": float(params.get("factor", 1.0)),
          "low": float(params.get("low_freq_factor", 1.0)),
          "high": float(params.get("high_freq_factor", 4.0)),
          "original_max": int(params.get("original_max_position_embeddings", 8192))}


def _layer_types(cfg: dict, family: str, n: int, file: str) -> tuple[str, ...]:
  types = cfg.get("layer_types")
  if types is None and family == "gemma2":  # before layer_types: every other layer local
    types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
  if types is None and family == "gemma3":
    pattern = int(cfg.get("sliding_window_pattern", 6))
    types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
  types = types or ["full_attention"] * n
  unknown = sorted(set(types) - set(_LAYER_TYPES))
  if unknown or len(types) != n:
    raise HFFormatError(f"{file}: layer_types {types} must name {n} layers of "
                        f"{sorted(_LAYER_TYPES)}")
  return tuple(_LAYER_TYPES[t] for t in types)


def decoder_fields(cfg: dict, *, file: str = "config.json") -> dict[str, Any]:
  """The :class:`kdjax.models.Decoder` fields of a Hugging Face causal-LM config dict.

  Raises:
    HFFormatError: an unsupported architecture, activation, RoPE type or a missing field.
  """
  family = _family(cfg, file)
  gemma = family in ("gemma2", "gemma3")

  def need(key):
    if cfg.get(key) is None:
      raise HFFormatError(f"{file}: field {key!r} is missing")
    return cfg[key]

  n = int(need("num_hidden_layers"))
  act_key = "hidden_activation" if gemma and cfg.get("hidden_activation") else "hidden_act"
  act = cfg.get(act_key, "silu")
  if act not in _ACTIVATIONS:
    raise HFFormatError(f"{file}: {act_key}={act!r} is not supported ({sorted(_ACTIVATIONS)})")
  heads = int(need("num_attention_heads"))
  types = _layer_types(cfg, family, n, file)
  full = _rope(cfg, "full_attention", file)
  local = _rope(cfg, "sliding_attention", file)
  if "sliding" in types and local != full and (local["type"] != "default" or family != "gemma3"):
    raise HFFormatError(f"{file}: sliding layers with their own scaled RoPE are not supported")
  bias = bool(cfg.get("attention_bias") or False)
  fields = {
      "num_classes": int(need("vocab_size")), "width": int(need("hidden_size")),
      "num_layers": n, "num_heads": heads,
      "num_kv_heads": int(cfg.get("num_key_value_heads") or heads),
      "head_dim": int(cfg.get("head_dim") or need("hidden_size") // heads),
      "mlp_width": int(need("intermediate_size")), "family": family,
      "activation": _ACTIVATIONS[act], "norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
      "norm_plus_one": gemma, "sandwich_norm": gemma, "embed_scale": gemma,
      "qkv_bias": True if family == "qwen2" else bias,
      "out_bias": False if family == "qwen2" else bias,
      "mlp_bias": bool(cfg.get("mlp_bias") or False) if family == "llama" else False,
      "qk_norm": family in ("qwen3", "gemma3"),
      "tie_embeddings": bool(cfg.get("tie_word_embeddings", gemma)),
      "attn_scale": float(cfg["query_pre_attn_scalar"]) ** -0.5 if gemma else 0.0,
      "attn_softcap": float(cfg.get("attn_logit_softcapping") or 0.0) if gemma else 0.0,
      "final_softcap": float(cfg.get("final_logit_softcapping") or 0.0) if gemma else 0.0,
      "layer_types": types,
      "sliding_window": int(cfg.get("sliding_window") or 0) if "sliding" in types else 0,
      "rope_theta": full["theta"], "rope_type": full["type"], "rope_factor": full["factor"],
      "rope_low_freq_factor": full["low"], "rope_high_freq_factor": full["high"],
      "rope_original_max": full["original_max"],
      "local_rope_theta": local["theta"] if family == "gemma3" and "sliding" in types else 0.0,
  }
  if "sliding" in types and not fields["sliding_window"]:
    raise HFFormatError(f"{file}: layer_types has sliding layers but sliding_window is not set")
  return fields


def weight_names(fields: dict[str, Any]) -> dict[str, tuple[str, ...]]:
  """``{Hugging Face tensor name: flax param path}`` of a decoder's weights; a path ending
  in ``"kernel"`` is a transposed ``Linear.weight``."""
  gemma_norms = fields["sandwich_norm"]
  names = {"model.embed_tokens.weight": ("embed", "embedding"),
           "model.norm.weight": ("norm", "scale")}
  if not fields["tie_embeddings"]:
    names["lm_head.weight"] = ("lm_head", "kernel")
  for i in range(fields["num_layers"]):
    hf, kd = f"model.layers.{i}", f"layer_{i}"
    for proj, bias in (("q_proj", fields["qkv_bias"]), ("k_proj", fields["qkv_bias"]),
                       ("v_proj", fields["qkv_bias"]), ("o_proj", fields["out_bias"])):
      names[f"{hf}.self_attn.{proj}.weight"] = (f"{kd}_attn", proj, "kernel")
      if bias:
        names[f"{hf}.self_attn.{proj}.bias"] = (f"{kd}_attn", proj, "bias")
    if fields["qk_norm"]:
      for norm in ("q_norm", "k_norm"):
        names[f"{hf}.self_attn.{norm}.weight"] = (f"{kd}_attn", norm, "scale")
    for proj in ("gate_proj", "up_proj", "down_proj"):
      names[f"{hf}.mlp.{proj}.weight"] = (f"{kd}_mlp", proj, "kernel")
      if fields["mlp_bias"]:
        names[f"{hf}.mlp.{proj}.bias"] = (f"{kd}_mlp", proj, "bias")
    norms = {"input_layernorm": "input_norm"}
    if gemma_norms:
      norms.update(post_attention_layernorm="post_attn_norm",
                   pre_feedforward_layernorm="pre_mlp_norm",
                   post_feedforward_layernorm="post_mlp_norm")
    else:
      norms["post_attention_layernorm"] = "pre_mlp_norm"
    for hf_norm, kd_norm in norms.items():
      names[f"{hf}.{hf_norm}.weight"] = (f"{kd}_{kd_norm}", "scale")
  return names


def _shard_files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
  """``{tensor name: file}`` of a (sharded) safetensors checkpoint."""
  index = folder / "model.safetensors.index.json"
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as e:
      raise HFFormatError(f"{index} cannot be read ({type(e).__name__}: {e})") from None
    missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
    if missing:
      raise HFFormatError(f"{index} names shard(s) that are missing: {missing[:3]}")
    return {name: folder / f for name, f in weight_map.items()}
  single = folder / "model.safetensors"
  if single.is_file():
    from safetensors import safe_open
    with safe_open(str(single), framework="flax") as f:
      return {name: single for name in f.keys()}
  other = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
  hint = (f" (found {other[:2]}: PyTorch pickles are not read; save with safetensors)"
          if other else "")
  raise HFFormatError(f"{folder}: no model.safetensors or model.safetensors.index.json{hint}")


def read_tensors(folder: pathlib.Path, names: list[str]) -> dict[str, jax.Array]:
  """The tensors ``names`` of a safetensors checkpoint, on the host CPU, file by file."""
  from safetensors import safe_open
  files = _shard_files(folder)
  by_file: dict[pathlib.Path, list[str]] = {}
  for name in names:
    by_file.setdefault(files[name], []).append(name)
  out = {}
  with jax.default_device(jax.devices("cpu")[0]):
    for file, wanted in by_file.items():
      with safe_open(str(file), framework="flax") as f:
        for name in wanted:
          out[name] = f.get_tensor(name)
  return out


def from_hf(path: str | pathlib.Path, *, dtype: Any = jnp.float32) -> tuple[Decoder, dict]:
  """``(model, variables)`` of a local Hugging Face causal-LM folder.

  ``kdjax.models.as_model(model).apply(variables, tokens, train=False)[0]`` gives the
  logits ``[B, T, V]`` of int ``tokens [B, T]`` (``attention_mask=`` for padding).

  Args:
    path: a folder with ``config.json`` and ``model.safetensors`` (or a sharded
      ``model.safetensors.index.json`` and its shards).
    dtype: the params' dtype (e.g. ``jnp.bfloat16`` for a teacher), on the host CPU;
      ``None`` keeps the checkpoint's.

  Raises:
    HFFormatError: not a causal LM, an unsupported architecture or field, a missing
      shard or tensor, or a tensor of the wrong shape (each names the file and field).
  """
  folder = pathlib.Path(path)
  fields = decoder_fields(read_config(folder), file=str(folder / "config.json"))
  model = Decoder(**fields)
  names = weight_names(fields)
  files = _shard_files(folder)
  missing = sorted(set(names) - set(files))
  if missing:
    raise HFFormatError(f"{folder}: checkpoint lacks tensor(s) {missing[:3]} that its "
                        f"config.json implies ({len(missing)} in all)")
  unexpected = sorted(n for n in set(files) - set(names) if not n.endswith(_IGNORED))
  if unexpected:
    raise HFFormatError(f"{folder}: checkpoint has tensor(s) {unexpected[:3]} that its "
                        "config.json does not describe (another architecture?)")
  expected = traverse_util.flatten_dict(jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"])
  tensors = read_tensors(folder, list(names))
  flat = {}
  for name, kd_path in names.items():
    tensor = tensors[name]
    transposed = kd_path[-1] == "kernel"  # Linear.weight [out, in] -> kernel [in, out]
    value = tensor.T if transposed else tensor
    want = tuple(expected[kd_path].shape)
    if tuple(value.shape) != want:
      raise HFFormatError(f"{folder}: tensor {name} has shape {tuple(tensor.shape)}, but "
                          f"config.json implies {want[::-1] if transposed else want}")
    flat[kd_path] = value if dtype is None else value.astype(dtype)
  return model, {"params": traverse_util.unflatten_dict(flat)}


def hf_config(model: Decoder) -> dict[str, Any]:
  """The ``config.json`` of ``model`` as its ``family``'s ``transformers`` class.

  Raises:
    ValueError: if the decoder's fields cannot be expressed in that family (e.g. q/k
      norms in a ``"llama"``).
  """
  fields = {name: getattr(model, name) for name in Decoder.__dataclass_fields__
            if name not in ("parent", "name")}
  family = fields["family"]
  if family not in _EXPORT:
    raise ValueError(f"Decoder.family {family!r} cannot be exported; families: {sorted(_EXPORT)}")
  arch, model_type = _EXPORT[family]
  gemma = family in ("gemma2", "gemma3")
  types = tuple(fields["layer_types"]) or ("full",) * fields["num_layers"]
  cfg = {
      "architectures": [arch], "model_type": model_type,
      "vocab_size": fields["num_classes"], "hidden_size": fields["width"],
      "intermediate_size": fields["mlp_width"], "num_hidden_layers": fields["num_layers"],
      "num_attention_heads": fields["num_heads"], "num_key_value_heads": fields["num_kv_heads"],
      "head_dim": fields["head_dim"] or fields["width"] // fields["num_heads"],
      "rms_norm_eps": fields["norm_eps"], "tie_word_embeddings": fields["tie_embeddings"],
      ("hidden_activation" if gemma else "hidden_act"):
          {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}[fields["activation"]],
      "layer_types": [{"full": "full_attention", "sliding": "sliding_attention"}[t]
                      for t in types],
      "rope_theta": fields["rope_theta"],
      "max_position_embeddings": max(8192, fields["rope_original_max"]),
  }
  if fields["rope_type"] != "default":
    cfg["rope_scaling"] = {"rope_type": fields["rope_type"], "factor": fields["rope_factor"]}
    if fields["rope_type"] == "llama3":
      cfg["rope_scaling"].update(low_freq_factor=fields["rope_low_freq_factor"],
                                 high_freq_factor=fields["rope_high_freq_factor"],
                                 original_max_position_embeddings=fields["rope_original_max"])
  if "sliding" in types:
    cfg["sliding_window"] = fields["sliding_window"]
  if family in ("llama", "qwen3") or gemma:
    cfg["attention_bias"] = fields["qkv_bias"]
  if family == "llama":
    cfg["mlp_bias"] = fields["mlp_bias"]
  if gemma:
    scalar = round(fields["attn_scale"] ** -2, 6)
    cfg["query_pre_attn_scalar"] = int(scalar) if scalar == int(scalar) else scalar
    cfg["final_logit_softcapping"] = fields["final_softcap"] or None
    cfg["attn_logit_softcapping"] = fields["attn_softcap"] or None
  if family == "gemma3" and fields["local_rope_theta"]:
    cfg["rope_local_base_freq"] = fields["local_rope_theta"]
  if family == "qwen2" and "sliding" in types:
    cfg["use_sliding_window"] = True
  back = decoder_fields(cfg)
  fields["layer_types"], fields["head_dim"] = types, cfg["head_dim"]
  if not fields["local_rope_theta"] and back["local_rope_theta"] == fields["rope_theta"]:
    back["local_rope_theta"] = 0.0
  differ = sorted(k for k in fields if back[k] != fields[k])
  if differ:
    raise ValueError(f"Decoder fields {differ} cannot be expressed as a {arch} "
                     f"(family {family!r}); pick the family that has them")
  return cfg


def to_hf(model: Any, variables: Any, path: str | pathlib.Path, *,
          dtype: Any = None, tokenizer_from: str | pathlib.Path | None = None) -> pathlib.Path:
  """Writes ``model`` + ``variables`` as a Hugging Face folder (``config.json`` and
  ``model.safetensors``) that ``transformers.AutoModelForCausalLM.from_pretrained`` loads.

  Args:
    model: a :class:`kdjax.models.Decoder` (or a kdjax ``Model`` wrapping one).
    variables: ``{"params": ...}`` of ``model``.
    path: the folder to write (created).
    dtype: the saved tensors' dtype (default: as they are).
    tokenizer_from: a folder whose tokenizer files (``tokenizer.json``,
      ``tokenizer_config.json``, ``special_tokens_map.json``) are copied along.
  """
  import safetensors.flax
  import shutil

  decoder = _unwrap(model)
  cfg = hf_config(decoder)
  fields = decoder_fields(cfg)
  params = traverse_util.flatten_dict(dict(variables["params"]))
  tensors = {}
  for name, kd_path in weight_names(fields).items():
    value = jnp.asarray(params[kd_path])
    value = value.T if kd_path[-1] == "kernel" else value
    tensors[name] = jnp.asarray(value if dtype is None else value.astype(dtype))
  out = pathlib.Path(path)
  out.mkdir(parents=True, exist_ok=True)
  cfg["torch_dtype"] = str(np.dtype(next(iter(tensors.values())).dtype))
  safetensors.flax.save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
  (out / "config.json").write_text(json.dumps(cfg, indent=2))
  if tokenizer_from is not None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
      if (pathlib.Path(tokenizer_from) / name).is_file():
        shutil.copy(pathlib.Path(tokenizer_from) / name, out / name)
  return out


def _unwrap(model: Any) -> Decoder:
  for _ in range(4):
    if isinstance(model, Decoder):
      return model
    model = getattr(model, "module", None) or getattr(model, "model", None)
  raise TypeError("to_hf exports a kdjax.models.Decoder (from from_hf or the 'decoder' "
                  "model); got another model")
