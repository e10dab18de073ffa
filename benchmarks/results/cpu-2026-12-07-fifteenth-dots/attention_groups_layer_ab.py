"""A transformer layer (attn: attention with its Dense layers; block; gpt: the whole model),
forward + backward, with zoo's blocked attention against the same in G batch groups.

    python attention_groups_layer_ab.py 2 attn|block|gpt
"""
import sys, time
from zoo.core import host_memory, xla_flags
xla_flags.apply_cpu_defaults(); host_memory.keep_freed_memory()
import jax, jax.numpy as jnp, numpy as np
from zoo.models import transformer as T
ours = T.blocked_causal_attention
groups = int(sys.argv[1]); what = sys.argv[2]
def grouped(q, k, v, query_block):
    parts = [ours(a, b, c, query_block) for a, b, c in zip(*(jnp.array_split(x, min(groups, x.shape[0])) for x in (q, k, v)))]
    return jnp.concatenate(parts)
if what == "attn":
    mod = T.CausalSelfAttention(n_head=6, n_layer=6)
    call = lambda p, x: mod.apply(p, x, True)[0]
elif what == "block":
    mod = T.Block(n_head=6, n_layer=6) if "n_layer" in T.Block.__dataclass_fields__ else T.Block(6, 6)
    call = lambda p, x: mod.apply(p, x, True)[0]
else:
    mod = T.GPT(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384)
    call = lambda p, x: mod.apply(p, x)
x = jax.random.normal(jax.random.PRNGKey(0), (16, 256, 384)) if what != "gpt" else jnp.zeros((16, 256), jnp.int32)
p = mod.init(jax.random.PRNGKey(1), x, True) if what != "gpt" else mod.init(jax.random.PRNGKey(1), x)
def make():
    if what == "gpt":
        return jax.jit(jax.grad(lambda p, x: call(p, x).astype(jnp.float32).mean()))
    return jax.jit(jax.grad(lambda p, x: (call(p, x) ** 2).mean(), argnums=(0, 1)))
old = make(); jax.block_until_ready(old(p, x))
T.blocked_causal_attention = grouped
new = make(); jax.block_until_ready(new(p, x))
T.blocked_causal_attention = ours
ts = {"old": [], "new": []}
for r in range(6):
    for n, f in (("old", old), ("new", new)):
        jax.block_until_ready(f(p, x)); s = time.perf_counter()
        for _ in range(3): jax.block_until_ready(f(p, x))
        ts[n].append((time.perf_counter() - s) / 3 * 1e3)
a, b = np.median(ts["old"]), np.median(ts["new"])
print(f"{what}: zoo {a:.1f} ms, {groups} groups {b:.1f} ms, speed-up {a / b:.3f}x")
