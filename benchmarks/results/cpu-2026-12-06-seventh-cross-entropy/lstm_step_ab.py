import sys
from zoo.core import xla_flags; xla_flags.apply_cpu_defaults()
from zoo.core import host_memory; host_memory.keep_freed_memory()
import jax.numpy as jnp
from jax import lax
from zoo.models import lstm as LS
from zoo.bench import catalog, timing
from zoo.bench.zoo_runner import ZooRunner

def lse_t(x, parts=25):  # the vocabulary folded (parts, V/parts): the first reductions are lane-wise
    n, v = x.shape
    xr = x.reshape(n, parts, v // parts)
    m = lax.stop_gradient(xr.max(1).max(-1, keepdims=True))
    s = jnp.exp(x - m).reshape(n, parts, v // parts).sum(1).sum(-1)
    return jnp.log(s) + m[:, 0]

def lm_metrics_t(logits, targets, unit):
    x = logits.astype(jnp.float32).reshape(-1, logits.shape[-1]); y = targets.reshape(-1)
    loss = jnp.mean(lse_t(x) - jnp.take_along_axis(x, y[:, None], 1)[:, 0])
    return loss, {"loss": loss, "perplexity": jnp.exp(loss)}

suite, steps = sys.argv[1], int(sys.argv[2])
case = [c for c in catalog.case_table(suite) if c.name == "lstm"][0]
a = ZooRunner(case, "single")
LS.lm_metrics = lm_metrics_t
b = ZooRunner(case, "single")
a.step(); b.step()
print("loss", a.loss(), b.loss())
ch = timing.run_alternating({"old": a.step, "new": b.step}, warmup=2, steps=steps, rounds=8)
mo, mn = ch["old"].stats()["median"]*1e3, ch["new"].stats()["median"]*1e3
print(f"{suite} lstm: optax {mo:.2f} folded {mn:.2f} speed-up {mo/mn:.3f}x", flush=True)
