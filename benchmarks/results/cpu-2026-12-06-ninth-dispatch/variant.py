"""One process, one allocator/dispatch variant: runs zoo bench with it and prints page faults."""
import ctypes, os, resource, sys
variant, out = sys.argv[1], sys.argv[2]
os.environ["ZOO_MALLOC_DEFAULTS"] = "0"
m = ctypes.CDLL(None).mallopt
base = {"all": ((-4, 0), (-1, -1), (-8, 1)), "noarena": ((-4, 0), (-1, -1)), "none": (),
        "arena2": ((-4, 0), (-1, -1), (-8, 2)), "arena3": ((-4, 0), (-1, -1), (-8, 3))}
name = variant.removesuffix("_sync")
for p, v in base[name]: assert m(p, v) == 1
import jax
if variant.endswith("_sync"):
    jax.config.update("jax_cpu_enable_async_dispatch", False)
from zoo.core import xla_flags; xla_flags.apply_cpu_defaults()
from zoo.bench import bench_main
rc = bench_main(sys.argv[3:] + ["--no-plots", "--out", out])
ru = resource.getrusage(resource.RUSAGE_SELF)
print(f"VARIANT {variant} minflt {ru.ru_minflt} nvcsw {ru.ru_nvcsw} nivcsw {ru.ru_nivcsw}")
sys.exit(rc)
