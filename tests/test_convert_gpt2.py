"""Hugging Face GPT-2 -> zoo: a tiny random GPT2LMHeadModel, saved, imported, compared."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from zoo import convert_gpt2, generate
from zoo.models import transformer


def _gpt2_config(**changes):
    # initializer_range 0.2, ten times GPT-2's 0.02: at 0.02 the MLP inputs stay within +-0.6,
    # where the exact and the tanh GELU agree to 2e-5, and a model with the wrong one passed.
    # At 0.2 half of them lie where the two differ by over 1e-4 (the most they ever differ is
    # 4.7e-4, at |x| = 2.7), and the softmax and LayerNorms see inputs of order 1 too.
    return transformers.GPT2Config(**{
        **dict(vocab_size=97, n_positions=40, n_embd=48, n_layer=2, n_head=4, resid_pdrop=0.0,
               embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
               initializer_range=0.2), **changes})


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(_gpt2_config()).eval()
    with torch.no_grad():  # random LayerNorm and bias values, so a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(path)  # config.json + model.safetensors
    return model, path


def _gelus(x):
    x = np.asarray(x, np.float64)
    exact = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    tanh = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return exact, tanh


def test_logits_and_greedy_continuations_match(hf_model, tmp_path):
    model, path = hf_model
    model_config, params = convert_gpt2.load(path)
    zoo_model = transformer.make_model(model_config)
    tokens = np.random.default_rng(0).integers(0, 97, (3, 40))
    inputs = []  # what each block's GELU sees
    hooks = [block.mlp.act.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
             for block in model.transformer.h]
    try:
        with torch.no_grad():
            want = model(torch.from_numpy(tokens)).logits.numpy()
    finally:
        for hook in hooks:
            hook.remove()
    exact, tanh = _gelus(torch.cat([x.flatten() for x in inputs]).numpy())
    assert np.mean(np.abs(exact - tanh) > 1e-4) > 0.25
    # float32 throughout, with PyTorch and XLA summing in their own orders: the logits agree to
    # a few float32 epsilons (1.2e-7) of their scale (measured 6.6e-7); 1e-5 leaves room for
    # other CPUs, and the same weights through the exact GELU are 2.9e-4 of the scale away.
    tolerance = 1e-5 * np.max(np.abs(want))
    got = np.asarray(jax.jit(zoo_model.apply)({"params": params}, jnp.asarray(tokens)))
    assert np.max(np.abs(got - want)) <= tolerance, np.max(np.abs(got - want)) / tolerance
    exact_gelu = transformers.GPT2LMHeadModel(_gpt2_config(activation_function="gelu")).eval()
    exact_gelu.load_state_dict(model.state_dict())
    with torch.no_grad():
        other = exact_gelu(torch.from_numpy(tokens)).logits.numpy()
    assert np.max(np.abs(other - want)) > 10 * tolerance  # so the tolerance tells them apart

    prompt = tokens[0, :7].tolist()
    with torch.no_grad():
        hf_out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                pad_token_id=0)[0, 7:].tolist()
    ours = generate.Generator(zoo_model, params, buckets=(8,)).generate_tokens(
        [prompt], 12, temperature=0.0)[0].tolist()
    assert ours == hf_out

    # The same weights from a PyTorch state dict (pytorch_model.bin) give the same params.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((path / "config.json").read_text())
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    _, params_bin = convert_gpt2.load(bin_dir)
    jax.tree.map(np.testing.assert_array_equal, params, params_bin)


def test_bad_checkpoints(hf_model, tmp_path):
    model, path = hf_model
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    del sd["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match="no 'h.1.mlp.c_fc.bias'"):
        convert_gpt2.convert_state_dict(sd, 2)
    with pytest.raises(ValueError, match="no config.json"):
        convert_gpt2.load(tmp_path)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        convert_gpt2.model_from_hf_config({"vocab_size": 10, "n_layer": 1, "n_head": 1,
                                           "n_embd": 8, "scale_attn_by_inverse_layer_idx": True})
    # A config.json edited away from its weights (n_embd 48 -> 64): refused at load, naming the
    # first tensor that does not fit, not inside the first forward pass.
    import json
    import shutil
    edited = tmp_path / "edited"
    shutil.copytree(path, edited)
    hf = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**hf, "n_embd": 64}))
    with pytest.raises(ValueError, match=r"do not fit its config.json: h_0/attn/c_attn/bias is "
                                         r"\(144,\), the config's model has \(192,\)"):
        convert_gpt2.load(edited)
    assert convert_gpt2.load(path)[0]["n_embd"] == 48  # the unedited folder still loads
