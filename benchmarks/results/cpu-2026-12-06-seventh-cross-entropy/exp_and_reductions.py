from zoo.core import xla_flags; xla_flags.apply_cpu_defaults()
import jax, jax.numpy as jnp, numpy as np, torch
from zoo.bench import timing
N, V = 700, 10000
x = jnp.asarray(np.random.default_rng(0).normal(size=(N, V)), jnp.float32)
xt = torch.from_numpy(np.asarray(x))
f = dict(
  exp_sum=jax.jit(lambda x: jnp.exp(x).sum(-1)),
  sum=jax.jit(lambda x: x.sum(-1)),
  max=jax.jit(lambda x: x.max(-1)),
  exp_store=jax.jit(lambda x: jnp.exp(x)),
  add_store=jax.jit(lambda x: x + 1.0),
  tanh_store=jax.jit(lambda x: jnp.tanh(x)),
)
steps = {k: (lambda g=g: g(x).block_until_ready()) for k, g in f.items()}
steps["torch exp_store"] = lambda: torch.exp(xt)
steps["torch exp_sum"] = lambda: torch.exp(xt).sum(-1)
steps["torch logsumexp"] = lambda: torch.logsumexp(xt, -1)
steps["torch log_softmax"] = lambda: torch.log_softmax(xt, -1)
steps["torch max"] = lambda: xt.max(-1)
ch = timing.run_alternating(steps, warmup=3, steps=40, rounds=8)
for n, c in ch.items(): print(f"{n:18s} {c.stats()['median']*1e3:7.3f} ms")
print(torch.get_num_threads())
