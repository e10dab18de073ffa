"""Hugging Face GPT-2 checkpoints into zoo's transformer, and back out.

``load(path)`` reads a GPT-2 folder as ``save_pretrained`` writes it (``config.json`` and
``model.safetensors`` or ``pytorch_model.bin``) and returns a :class:`zoo.models.transformer.GPT`
and its params. Hugging Face's GPT-2 stores its projections as ``Conv1D`` with weights laid out
(in, out), which is flax's ``Dense`` kernel layout, so the import is renaming, not transposing.
Safetensors are read with ``safetensors.numpy`` (no PyTorch needed); ``.bin`` files need PyTorch.

``save(out, model, params, tokenizer)`` is the way back: a folder that
``transformers.GPT2LMHeadModel.from_pretrained`` and ``GPT2Tokenizer.from_pretrained`` load
(``config.json``, ``model.safetensors``, ``vocab.json``, ``merges.txt``), written without
``transformers``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from zoo import tokenizers as tok
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
    try:  # damaged or foreign: say which file (unsupported options say so themselves)
        model_config = model_config_from_hf(json.loads(config_file.read_text()), dtype)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{config_file} is not a GPT-2 config.json ({type(e).__name__}: "
                         f"{e})") from None
    try:
        params = convert_state_dict(read_state_dict(path), model_config["n_layer"])
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 -- damaged weights, or not the config's model
        raise ValueError(f"the weights in {path} do not load as its config.json's GPT-2 "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    _check_shapes(model_config, params, path)
    return model_config, _to_jax(params)


def _check_shapes(model_config: dict, params: Mapping, path: Path) -> None:
    """Refuses weights whose shapes are not the ones ``config.json``'s model has (an edited
    ``n_embd`` or vocabulary would otherwise fail inside the first forward pass)."""
    model = transformer.make_model(model_config)
    wanted = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 1), jnp.int32)))["params"]
    for (key, want), (_, got) in zip(jax.tree_util.tree_leaves_with_path(wanted),
                                     jax.tree_util.tree_leaves_with_path(params)):
        if tuple(want.shape) != tuple(np.shape(got)):
            name = "/".join(str(getattr(k, "key", k)) for k in key)
            raise ValueError(f"the weights in {path} do not fit its config.json: {name} is "
                             f"{tuple(np.shape(got))}, the config's model has {tuple(want.shape)}")


def _to_jax(tree):
    if isinstance(tree, dict):
        return {k: _to_jax(v) for k, v in tree.items()}
    return jnp.asarray(tree)


def hf_config(model: transformer.GPT, tokenizer: tok.Tokenizer | None = None) -> dict:
    """GPT-2's ``config.json`` for zoo's GPT (dropout as the model has it; the tokenizer's
    ``<|endoftext|>`` as GPT-2's bos and eos, where it has one)."""
    eos = getattr(tokenizer, "eos_id", None)
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": model.vocab_size, "n_positions": model.block_size,
            "n_embd": model.n_embd, "n_layer": model.n_layer, "n_head": model.n_head,
            "n_inner": None, "activation_function": "gelu_new",
            "resid_pdrop": model.dropout, "embd_pdrop": model.dropout, "attn_pdrop": 0.0,
            "layer_norm_epsilon": model.layer_norm_eps, "initializer_range": 0.02,
            "scale_attn_weights": True, "tie_word_embeddings": True, "use_cache": True,
            "bos_token_id": eos, "eos_token_id": eos, "torch_dtype": "float32"}


def to_state_dict(params: Mapping, n_layer: int) -> dict[str, np.ndarray]:
    """GPT-2's state dict (``transformer.*`` names, float32) from zoo's params: the inverse of
    :func:`convert_state_dict`. The output head is tied to ``wte``, as GPT-2 saves it."""
    sd = {"transformer.wte.weight": params["wte"]["embedding"],
          "transformer.wpe.weight": params["wpe"]["embedding"],
          "transformer.ln_f.weight": params["ln_f"]["scale"],
          "transformer.ln_f.bias": params["ln_f"]["bias"]}
    for i in range(n_layer):
        for hf_name, path in _LAYER_PARTS.items():
            node = params[f"h_{i}"]
            for part in path:
                node = node[part]
            sd[f"transformer.h.{i}.{hf_name}"] = node
    return {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in sd.items()}


def bpe_files(tokenizer: tok.Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` of a byte-level BPE that tokenizes as ``tokenizer`` does: GPT-2's own,
    or a character tokenizer over ASCII, which is a byte-level BPE with no merges (each byte one
    token). Other tokenizers are refused."""
    if isinstance(tokenizer, tok.GPT2Tokenizer):
        merges = sorted(tokenizer.ranks, key=tokenizer.ranks.get)
        return dict(tokenizer.encoder), [tuple(m) for m in merges]
    if isinstance(tokenizer, tok.CharTokenizer):
        wide = [c for c in tokenizer.chars if len(c.encode("utf-8")) != 1]
        if wide:
            raise ValueError(f"the character tokenizer has characters of more than one byte "
                             f"({''.join(wide[:10])!r}); GPT-2's byte-level BPE cannot give "
                             "them one token each")
        byte_names = tok.bytes_to_unicode()
        return {byte_names[ord(c)]: i for i, c in enumerate(tokenizer.chars)}, []
    raise ValueError(f"a {tokenizer.name} tokenizer has no GPT-2 (byte-level BPE) form; only "
                     "GPT-2's BPE and ASCII character tokenizers do")


def save(out: str | os.PathLike, model: transformer.GPT, params: Mapping,
         tokenizer: tok.Tokenizer | None = None) -> Path:
    """Writes ``model`` (zoo's GPT) with ``params`` as a Hugging Face GPT-2 folder:
    ``config.json`` and ``model.safetensors``, and with a tokenizer ``vocab.json`` and
    ``merges.txt`` (:func:`bpe_files`). Any other model is refused, saying what does not fit."""
    if not isinstance(model, transformer.GPT):
        raise ValueError(f"the hf-gpt2 format holds GPT-2's architecture; this run's model is "
                         f"a {type(model).__name__}, not zoo's transformer (GPT)")
    from safetensors.numpy import save_file

    files = bpe_files(tokenizer) if tokenizer is not None else None  # refuse before writing
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(model, tokenizer), indent=2))
    save_file(to_state_dict(params, model.n_layer), str(out / "model.safetensors"),
              metadata={"format": "pt"})
    if files is not None:
        vocab, merges = files
        (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (out / "merges.txt").write_text("#version: 0.2\n" + "".join(
            f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return out
