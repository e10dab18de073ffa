import ctypes, os, sys
variant = sys.argv[1]; out = sys.argv[2]
os.environ["ZOO_MALLOC_DEFAULTS"] = "0"
m = ctypes.CDLL(None).mallopt
params = {"all": ((-4, 0), (-1, -1), (-8, 1)), "none": (), "noarena": ((-4, 0), (-1, -1))}[variant]
for p, v in params: assert m(p, v) == 1
from zoo.core import xla_flags; xla_flags.apply_cpu_defaults()
from zoo.bench import bench_main
sys.exit(bench_main(["--loop", "--cases", "vae-mlp,autoencoder-mlp,classifier-mlp", "--no-plots", "--out", out]))
