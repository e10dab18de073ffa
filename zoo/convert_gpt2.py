"""Hugging Face GPT-2 checkpoints into zoo's transformer.

``load(path)`` reads a GPT-2 folder as ``save_pretrained`` writes it (``config.json`` and
``model.safetensors`` or ``pytorch_model.bin``) and returns a :class:`zoo.models.transformer.GPT`
and its params. Hugging Face's GPT-2 stores its projections as ``Conv1D`` with weights laid out
(in, out), which is flax's ``Dense`` kernel layout, so the import is renaming, not transposing.
Safetensors are read with ``safetensors.numpy`` (no PyTorch needed); ``.bin`` files need PyTorch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import jax.numpy as jnp
import numpy as np

from zoo.models import transformer

_LAYER_PARTS = {  # Hugging Face name inside h.{i}. -> path inside zoo's h_{i}
    "ln_1.weight": ("ln_1", "scale"), "ln_1.bias": ("ln_1", "bias"),
    "attn.c_attn.weight": ("attn", "c_attn", "kernel"),
    "attn.c_attn.bias": ("attn", "c_attn", "bias"),
    "attn.c_proj.weight": ("attn", "c_proj", "kernel"),
    "attn.c_proj.bias": ("attn", "c_proj", "bias"),
    "ln_2.weight": ("ln_2", "scale"), "ln_2.bias": ("ln_2", "bias"),
    "mlp.c_fc.weight": ("mlp", "c_fc", "kernel"), "mlp.c_fc.bias": ("mlp", "c_fc", "bias"),
    "mlp.c_proj.weight": ("mlp", "c_proj", "kernel"), "mlp.c_proj.bias": ("mlp", "c_proj", "bias"),
}
_IGNORED = ("attn.bias", "attn.masked_bias")  # causal-mask buffers in older checkpoints


def model_config_from_hf(hf: Mapping, dtype: str = "float32") -> dict:
    """zoo's transformer model config (``family="transformer"``) for a GPT-2 ``config.json``."""
    unsupported = [k for k in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn")
                   if hf.get(k)]
    if hf.get("scale_attn_weights", True) is False:
        unsupported.append("scale_attn_weights=False")
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        unsupported.append(f"activation_function={hf['activation_function']}")
    if hf.get("tie_word_embeddings", True) is False:
        unsupported.append("tie_word_embeddings=False")
    if unsupported:
        raise ValueError(f"GPT-2 config options zoo's transformer does not implement: "
                         f"{', '.join(unsupported)}")
    return dict(family="transformer", vocab_size=int(hf["vocab_size"]),
                block_size=int(hf.get("n_positions", 1024)), n_layer=int(hf["n_layer"]),
                n_head=int(hf["n_head"]), n_embd=int(hf["n_embd"]),
                layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), dtype=dtype,
                unit="token")


def model_from_hf_config(hf: Mapping, dtype: str = "float32") -> transformer.GPT:
    """zoo's GPT for a GPT-2 ``config.json`` dict."""
    return transformer.make_model(model_config_from_hf(hf, dtype))


def convert_state_dict(state_dict: Mapping[str, np.ndarray], n_layer: int) -> dict:
    """Zoo params (nested dict of float32 numpy arrays) from a GPT-2 state dict."""
    sd = {}
    for key, value in state_dict.items():
        key = key[len("transformer."):] if key.startswith("transformer.") else key
        sd[key] = np.asarray(value, np.float32)
    params: dict = {"wte": {"embedding": sd.pop("wte.weight")},
                    "wpe": {"embedding": sd.pop("wpe.weight")},
                    "ln_f": {"scale": sd.pop("ln_f.weight"), "bias": sd.pop("ln_f.bias")}}
    lm_head = sd.pop("lm_head.weight", None)
    if lm_head is not None and not np.array_equal(lm_head, params["wte"]["embedding"]):
        raise ValueError("lm_head.weight differs from wte.weight: zoo's transformer ties them")
    for i in range(n_layer):
        block: dict = {}
        for hf_name, path in _LAYER_PARTS.items():
            key = f"h.{i}.{hf_name}"
            if key not in sd:
                raise ValueError(f"checkpoint has no {key!r}")
            node = block
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = sd.pop(key)
        for name in _IGNORED:
            sd.pop(f"h.{i}.{name}", None)
        params[f"h_{i}"] = block
    if sd:
        raise ValueError(f"checkpoint has {len(sd)} unexpected tensors, e.g. {sorted(sd)[:5]}")
    return params


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of ``model.safetensors`` or ``pytorch_model.bin`` (a file, or in a folder)."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise ValueError(f"{path} has neither model.safetensors nor pytorch_model.bin")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        return dict(load_file(str(path)))
    import torch  # PyTorch pickles need PyTorch

    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in sd.items()}


def load(path: str | os.PathLike, dtype: str = "float32") -> tuple[dict, dict]:
    """``(model_config, params)`` from a Hugging Face GPT-2 folder (``config.json`` + weights):
    zoo's transformer model config (:func:`model_config_from_hf`) and its params."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise ValueError(f"{path} has no config.json; a GPT-2 folder is what save_pretrained "
                         "writes")
    model_config = model_config_from_hf(json.loads(config_file.read_text()), dtype)
    params = convert_state_dict(read_state_dict(path), model_config["n_layer"])
    return model_config, _to_jax(params)


def _to_jax(tree):
    if isinstance(tree, dict):
        return {k: _to_jax(v) for k, v in tree.items()}
    return jnp.asarray(tree)
