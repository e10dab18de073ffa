"""Compile time and memory_analysis of the transformer step, attention before and after (run from
the repository root)."""
import sys
sys.path.insert(0, __import__("os").path.dirname(__file__))
from zoo.core import xla_flags
xla_flags.apply_cpu_defaults()
import zoo.models.transformer as transformer
from zoo.bench import catalog
from zoo.bench.zoo_runner import ZooRunner
from attention_ab import transformer_before
before = transformer_before()
after = transformer.causal_attention
for suite in ("quick", "full"):
    case = next(c for c in catalog.case_table(suite) if c.name == "transformer")
    for name, fn in (("before", before.causal_attention), ("after", after)):
        transformer.causal_attention = fn
        r = ZooRunner(case, "single")
        m = r.memory
        print(f"{suite} {name}: compile {r.compile_s:.1f} s, lower {r.lower_s:.1f} s, memory {m}")
