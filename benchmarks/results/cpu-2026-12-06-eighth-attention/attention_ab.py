"""The transformer's train step with causal attention before this change (jax.nn.dot_product_attention
per query block of 4, from 256 tokens; zoo/models/transformer.py at d6bf3e3, read from git) and
after (zoo.models.transformer.blocked_causal_attention), and the PyTorch peer, alternating in one
process (the bench's own timer). Run from the repository root:

    python benchmarks/results/cpu-2026-12-06-eighth-attention/attention_ab.py quick|full STEPS ROUNDS
"""
import subprocess
import sys
import types

from zoo.core import xla_flags

xla_flags.apply_cpu_defaults()

import jax  # noqa: E402

import zoo.models.transformer as transformer  # noqa: E402
from zoo.bench import catalog, timing  # noqa: E402
from zoo.bench.peer_runner import PeerRunner  # noqa: E402
from zoo.bench.zoo_runner import ZooRunner  # noqa: E402


def transformer_before(commit: str = "d6bf3e3") -> types.ModuleType:
    """zoo/models/transformer.py as it was at ``commit``, as a module."""
    source = subprocess.run(["git", "show", f"{commit}:zoo/models/transformer.py"],
                            capture_output=True, text=True, check=True).stdout
    module = sys.modules["zoo_transformer_before"] = types.ModuleType("zoo_transformer_before")
    exec(compile(source, f"{commit}:zoo/models/transformer.py", "exec"), module.__dict__)
    return module


if __name__ == "__main__":
    before = transformer_before()
    suite, steps, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    case = next(c for c in catalog.case_table(suite) if c.name == "transformer")
    after = transformer.causal_attention
    transformer.causal_attention = before.causal_attention   # the step traces the module's global
    runners = {"before": ZooRunner(case, "single")}
    transformer.causal_attention = after
    runners["after"] = ZooRunner(case, "single")
    peer = PeerRunner(case, runners["after"].host_batch)
    chronos = timing.run_alternating({**{k: r.step for k, r in runners.items()}, "torch": peer.step},
                                     warmup=2, steps=steps, rounds=rounds)
    ms = {k: c.stats()["median"] * 1e3 for k, c in chronos.items()}
    print(f"{suite}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()) +
          f"; after/before speed-up {ms['before'] / ms['after']:.3f}x; vs torch: before "
          f"{ms['torch'] / ms['before']:.3f}x, after {ms['torch'] / ms['after']:.3f}x "
          f"(jax {jax.__version__})", flush=True)
