#!/bin/bash
# Intel: zoo's allocator/dispatch setting (noarena_sync) against glibc's defaults with async dispatch (none), alternating processes.
cd /work/main && . .venv/bin/activate
V=benchmarks/results/cpu-2026-12-06-ninth-dispatch/variant.py
O=/tmp/exp10/pairs  # copied here afterwards: results.json, results.md and the rusage line of each process
mkdir -p $O
for i in 1 2 3; do
  for v in none noarena_sync; do
    python $V $v $O/q-$v-$i --cases autoencoder-mlp,vae-mlp,lstm,transformer --peers '' --strategies single --sweep '' --no-peak --steps 30 --rounds 2 2>&1 | grep VARIANT > $O/q-$v-$i.rusage
    python $V $v $O/f-$v-$i --suite full --cases lstm,transformer --peers '' --strategies single --sweep '' --no-peak --steps 10 --rounds 2 2>&1 | grep VARIANT > $O/f-$v-$i.rusage
  done
done
echo done > $O/DONE
