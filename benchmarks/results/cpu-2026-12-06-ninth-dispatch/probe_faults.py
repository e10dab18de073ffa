import ctypes, os, resource, sys, threading
variant, n = sys.argv[1], int(sys.argv[2])
m = ctypes.CDLL(None).mallopt
base = {"all": ((-4, 0), (-1, -1), (-8, 1)), "noarena": ((-4, 0), (-1, -1)), "none": (), "none_sync": ()}
name = variant.removesuffix("_sync") if variant != "none_sync" else "none"
for p, v in base[name]: assert m(p, v) == 1
import jax, jax.numpy as jnp
if variant.endswith("_sync"):
    jax.config.update("jax_cpu_enable_async_dispatch", False)
x, w = jnp.ones((2048, 256)), jnp.full((256, n), 0.01)
step = jax.jit(jax.grad(lambda w, x: jnp.tanh(x @ w).sum()))
temp = step.lower(w, x).compile().memory_analysis().temp_size_in_bytes
for _ in range(int(os.environ.get("WARM", "2"))):
    step(w, x).block_until_ready()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step(w, x).block_until_ready()
print(variant, n, temp >> 20, "MiB", (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) // 3, threading.active_count())
