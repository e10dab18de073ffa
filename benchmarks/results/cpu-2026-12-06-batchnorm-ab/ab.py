"""flax's nn.BatchNorm against zoo.models.layers.BatchNorm in the DCGAN case's compiled step,
alternating in one process: python ab.py SUITE STEPS (run from the repository root)."""
import os
import sys

from zoo.core import host_memory, xla_flags

xla_flags.apply_cpu_defaults()  # before JAX starts, as zoo bench does
host_memory.keep_freed_memory()
import flax.linen as nn  # noqa: E402

import zoo.models.gan as gan  # noqa: E402
from zoo.bench import catalog, timing  # noqa: E402
from zoo.bench.zoo_runner import ZooRunner  # noqa: E402

suite, steps = sys.argv[1], int(sys.argv[2])
case = [c for c in catalog.case_table(suite) if c.name == "gan-dcgan"][0]
ours = gan.BatchNorm
gan.BatchNorm = nn.BatchNorm
flax_step = ZooRunner(case, "single")
gan.BatchNorm = ours
zoo_step = ZooRunner(case, "single")
flax_step.step(), zoo_step.step()
print(f"first-step D loss: flax {flax_step.loss()!r}, zoo {zoo_step.loss()!r}")
laps = timing.run_alternating({"flax": flax_step.step, "zoo": zoo_step.step}, warmup=2,
                              steps=steps, rounds=8)
a, b = (laps[k].stats()["median"] * 1e3 for k in ("flax", "zoo"))
print(f"{suite} gan-dcgan: flax BatchNorm {a:.2f} ms, zoo BatchNorm {b:.2f} ms, {a / b:.3f}x "
      f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})")
