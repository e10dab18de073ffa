# Your own Flax model and loss, trained with zoo's shared step on 8 devices (data x fsdp mesh).
import os
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # 8 CPU devices

import jax, jax.numpy as jnp, numpy as np, optax
from flax import linen as nn
from zoo import TrainState, compile_train_step, make_strategy

class Regressor(nn.Module):                       # any linen module
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.gelu(nn.Dense(256)(x)))

model = Regressor()
def loss_fn(params, batch, rng):                  # your loss: (params, batch, rng) -> (loss, metrics)
    loss = jnp.mean((model.apply({"params": params}, batch["x"]) - batch["y"]) ** 2)
    return loss, {"loss": loss}

x = np.random.default_rng(0).normal(size=(512, 16)).astype(np.float32)
batch = {"x": x, "y": np.sin(x).sum(1, keepdims=True)}
strategy = make_strategy("mesh", data=4, fsdp=2)   # or "single", "pmap"
state = strategy.place_state(TrainState.create(
    params=model.init(jax.random.PRNGKey(0), x[:1])["params"], tx=optax.adam(1e-3), seed=0))
step = compile_train_step(loss_fn, strategy, grad_accum_steps=2)
for i in range(200):
    state, metrics = step(state, batch)
print(f"loss after 200 steps: {float(metrics['loss']):.4f} on {jax.device_count()} devices")
