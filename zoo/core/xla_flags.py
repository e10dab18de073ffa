"""XLA:CPU options zoo's commands start JAX with, measured (``benchmarks/xla_cpu_flags.py``).

jaxlib 0.10.2 hands three kinds of work to YNNPACK on CPU: dots, reductions and convolutions.
On a 2-core x86 machine, in one process with the executables alternating, its reductions made
the autoencoder's step 1.45x slower (two scalar reductions took a quarter of the step) and its
convolutions DCGAN's 1.13-1.2x slower, while its dots help the transformer; keeping only the dots
changed no loss by more than float rounding (first-step loss within 3e-6). Measured again on
2026-12-06 (AMD EPYC): YNNPACK's reductions sum over leading axes (bias gradients, batch-norm
statistics) 1.7-8x faster than XLA's own and make DCGAN's quick step 1.12x faster, but a fused
sum over a trailing axis of 1-3 (an image loss over (B, 28, 28, 1)) is 2-8x slower, and they
return wrong sums (jax#39103, reproduced: 1065369600 where the sum is 2**30), so they stay off.
``zoo`` and ``zoo bench`` set it where JAX starts; an ``XLA_FLAGS`` that already names the
option wins, and ``ZOO_XLA_DEFAULTS=0`` leaves XLA's defaults. Importing zoo as a library sets
nothing.
"""

from __future__ import annotations

import os
from typing import MutableMapping

OPT_OUT_ENV = "ZOO_XLA_DEFAULTS"
CPU_DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": "INDIVIDUAL_DOT"}


def apply_cpu_defaults(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Adds :data:`CPU_DEFAULTS` to ``environ["XLA_FLAGS"]`` (before JAX starts its backend),
    leaving any option the flags already name; returns the flags added."""
    if environ.get(OPT_OUT_ENV, "1") == "0":
        return []
    flags = environ.get("XLA_FLAGS", "")
    added = [f"--{k}={v}" for k, v in CPU_DEFAULTS.items() if f"--{k}=" not in flags]
    if added:
        environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()
    return added
