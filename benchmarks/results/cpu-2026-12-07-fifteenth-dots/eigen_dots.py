"""Which dots of a bench case's compiled step XLA:CPU leaves to Eigen (outside YNNPACK fusions).

    python eigen_dots.py quick autoencoder-mlp,lstm
"""
import sys, re
from zoo.core import xla_flags, host_memory
xla_flags.apply_cpu_defaults(); host_memory.keep_freed_memory()
from zoo.bench import catalog
from zoo.bench.zoo_runner import ZooRunner
suite = sys.argv[1]
for name in sys.argv[2].split(","):
    cases, _ = catalog.suite_cases(suite, [name])
    text = ZooRunner(cases[0], "single").executable.as_text()
    # dots in the entry/while computations (not inside fused computations)
    comp, eigen, ynn = None, [], 0
    for line in text.splitlines():
        m = re.match(r"^(ENTRY )?%?(\S+) .*\{$", line)
        if m: comp = m.group(2)
        if " dot(" in line:
            if comp.startswith("fused_computation"): ynn += 1
            else:
                shape = line.split("=")[1].split("dot(")[0].strip()
                dims = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}.*rhs_contracting_dims=\{([0-9,]*)\}", line)
                batch = "batch" if "lhs_batch" in line else ""
                eigen.append(f"{shape} lc={dims.group(1)} rc={dims.group(2)} {batch}")
    print(f"## {name}: {ynn} dots in fusions (YNNPACK), {len(eigen)} outside:")
    for e in eigen: print("   ", e)
