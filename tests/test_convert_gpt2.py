"""Hugging Face GPT-2 -> zoo: a tiny random GPT2LMHeadModel, saved, imported, compared."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import convert_gpt2, generate
from zoo.models import transformer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=97, n_positions=40, n_embd=48, n_layer=2, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # random LayerNorm and bias values, so a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(path)  # config.json + model.safetensors
    return model, path


def test_logits_and_greedy_continuations_match(hf_model, tmp_path):
    model, path = hf_model
    model_config, params = convert_gpt2.load(path)
    zoo_model = transformer.make_model(model_config)
    tokens = np.random.default_rng(0).integers(0, 97, (3, 40))
    with torch.no_grad():
        want = model(torch.from_numpy(tokens)).logits.numpy()
    got = np.asarray(jax.jit(zoo_model.apply)({"params": params}, jnp.asarray(tokens)))
    assert np.max(np.abs(got - want)) <= 1e-4

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
