"""flax's nn.Dense against zoo.models.layers.Dense in a language-model case's compiled step,
alternating in one process: python ab.py CASE SUITE STEPS (run from the repository root;
CASE is transformer or lstm)."""
import os
import sys

from zoo.core import host_memory, xla_flags

xla_flags.apply_cpu_defaults()  # before JAX starts, as zoo bench does
host_memory.keep_freed_memory()
import flax.linen as nn  # noqa: E402

import zoo.models.lstm  # noqa: E402
import zoo.models.transformer  # noqa: E402
from zoo.bench import catalog, timing  # noqa: E402
from zoo.bench.zoo_runner import ZooRunner  # noqa: E402

name, suite, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
module = {"transformer": zoo.models.transformer, "lstm": zoo.models.lstm}[name]
case = [c for c in catalog.case_table(suite) if c.name == name][0]
ours = module.Dense
module.Dense = nn.Dense
flax_step = ZooRunner(case, "single")
module.Dense = ours
zoo_step = ZooRunner(case, "single")
flax_step.step(), zoo_step.step()
print(f"first-step loss: flax {flax_step.loss()!r}, zoo {zoo_step.loss()!r}")
laps = timing.run_alternating({"flax": flax_step.step, "zoo": zoo_step.step}, warmup=2,
                              steps=steps, rounds=8)
a, b = (laps[k].stats()["median"] * 1e3 for k in ("flax", "zoo"))
print(f"{suite} {name}: flax Dense {a:.2f} ms, zoo Dense {b:.2f} ms, {a / b:.3f}x "
      f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})", flush=True)
