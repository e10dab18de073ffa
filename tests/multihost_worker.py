"""One process of a multi-host run on 127.0.0.1 (used by test_multihost.py).

    python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT LOCAL_DEVICES OUT.npz [WORKDIR]

Trains the MLP autoencoder for 5 steps under the mesh strategy over every device of every process,
each process feeding its local slice of the same global batches, and writes the final params.
With a WORKDIR, runs the whole pipeline instead (``zoo.train.train``): the PTB LSTM with its
carried state, evaluation, text samples and checkpoints, and writes the final params and the
last evaluation.
"""

import os
import sys

pid, nproc, port, local_devices, out = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                        int(sys.argv[4]), sys.argv[5])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if nproc > 1:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)

import numpy as np  # noqa: E402
import optax  # noqa: E402


def write(final, **scalars):
    if pid == 0:
        flat = {jax.tree_util.keystr(k): np.asarray(v)
                for k, v in jax.tree_util.tree_leaves_with_path(final)}
        np.savez(out, **scalars, **flat)


if len(sys.argv) > 6:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from configs_loader import load_config
    from zoo import sample, train
    from zoo.config import apply_overrides

    config = apply_overrides(load_config("lstm_ptb_small"), [
        "--config.model.hidden_size=32", "--config.data.seq_len=10",
        "--config.data.batch_size=8", "--config.data.eval_batch_size=8",
        "--config.parallel.strategy=mesh", "--config.train.steps=6",
        "--config.train.eval_every=3", "--config.train.checkpoint_every=3",
        "--config.train.sample_tokens=5"])
    result = train.train(config, sys.argv[6], log=lambda s: None,
                         make_sampler=sample.run_sampler)
    assert result.strategy.num_shards == nproc * local_devices
    write(result.strategy.to_host(result.state.params), **result.eval_metrics)
    print(f"process {pid}/{nproc}: pipeline done, eval {result.eval_metrics}", flush=True)
    sys.exit(0)

from zoo import data  # noqa: E402
from zoo.core import compiled, parallel  # noqa: E402
from zoo.core.train_state import TrainState  # noqa: E402
from zoo.models import autoencoder  # noqa: E402

GLOBAL_BATCH = 32
family = autoencoder.make_family({"arch": "mlp", "hidden": (64,), "latent_dim": 8})
arrays = {"image": data.synthetic_images(256, seed=0)["image"]}
it = data.BatchIterator(arrays, GLOBAL_BATCH, seed=0)  # slices per process itself
assert it.process_count == nproc and it.process_index == pid

params, model_state = family.init(jax.random.PRNGKey(0), {"image": arrays["image"][:1]})
strategy = parallel.make_strategy("mesh")
assert strategy.num_shards == nproc * local_devices
state = strategy.place_state(TrainState.create(params=params, tx={"model": optax.sgd(0.05, momentum=0.9)},
                                               model_state=model_state, seed=1))
step = compiled.compile_train_step(family.objective, strategy, batch_spec=family.batch_spec)
for _ in range(5):
    state, metrics = step(state, next(it))
final = strategy.to_host(state.params)
loss = float(strategy.to_host(metrics)["loss"])
write(final, loss=loss)
print(f"process {pid}/{nproc}: {jax.device_count()} devices, loss {loss:.6f}", flush=True)
