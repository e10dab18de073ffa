"""flax's layer against zoo's in a bench case's compiled train step, alternating in one process.

A model file that uses one of :mod:`zoo.models.layers` imports it by name (``from
zoo.models.layers import BatchNorm``); this builds the case's step once with that name bound to
flax.linen's layer of the same name, once with zoo's, and times the two steps in alternating
rounds (so the machine's drift falls on both alike), after checking their first-step losses:

    python benchmarks/layer_ab.py gan-dcgan full 40 zoo.models.gan BatchNorm
    python benchmarks/layer_ab.py transformer quick 30 zoo.models.transformer Dense
"""

import importlib
import os
import sys

from zoo.core import host_memory, xla_flags

xla_flags.apply_cpu_defaults()  # before JAX starts, as zoo bench does
host_memory.keep_freed_memory()
import flax.linen as nn  # noqa: E402

from zoo.bench import catalog, timing  # noqa: E402
from zoo.bench.zoo_runner import ZooRunner  # noqa: E402


def main() -> int:
    if len(sys.argv) != 6:
        print("usage: python benchmarks/layer_ab.py CASE SUITE STEPS MODULE LAYER", file=sys.stderr)
        return 2
    name, suite, steps, module_name, layer = sys.argv[1:]
    module = importlib.import_module(module_name)
    case = next(c for c in catalog.case_table(suite) if c.name == name)
    ours = getattr(module, layer)
    setattr(module, layer, getattr(nn, layer))
    try:
        flax_step = ZooRunner(case, "single")
    finally:
        setattr(module, layer, ours)
    zoo_step = ZooRunner(case, "single")
    flax_step.step(), zoo_step.step()
    print(f"first-step loss: flax {flax_step.loss()!r}, zoo {zoo_step.loss()!r}")
    laps = timing.run_alternating({"flax": flax_step.step, "zoo": zoo_step.step}, warmup=2,
                                  steps=int(steps), rounds=8)
    a, b = (laps[k].stats()["median"] * 1e3 for k in ("flax", "zoo"))
    print(f"{suite} {name}: flax {layer} {a:.2f} ms, zoo {layer} {b:.2f} ms, {a / b:.3f}x "
          f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
