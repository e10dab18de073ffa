"""PyTorch peer alone, process per setting: does zoo's allocator setting change its step?"""
import os, sys, time
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from zoo.core import host_memory
print("applied", host_memory.keep_freed_memory(), file=sys.stderr)
import numpy as np
from zoo import models
from zoo.bench import catalog, timing
from zoo.bench.zoo_runner import synthetic_batch, zoo_config
from zoo.bench.peer_runner import PeerRunner
from zoo.bench.timing import minor_page_faults
mode = "on" if host_memory.applied else "off"
for name in sys.argv[2].split(","):
    case = [c for c in catalog.case_table(sys.argv[1]) if c.name == name][0]
    fam = models.make_family(zoo_config(case, "single").model)
    p = PeerRunner(case, synthetic_batch(fam.batch_spec, case.batch_size, int_high=case.int_high))
    ch = timing.run_alternating({"t": p.step}, warmup=5, steps=40, rounds=4)
    print(f"{mode} {name}: torch {ch['t'].stats()['median']*1e3:.1f} ms, {ch['t'].faults_per_step():.0f} faults/step", flush=True)
