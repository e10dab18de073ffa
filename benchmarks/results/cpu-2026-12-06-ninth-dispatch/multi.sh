#!/bin/bash
# Two forced CPU devices: mesh and pmap steps under each variant, alternating.
cd /work/main && . .venv/bin/activate && cd /tmp/exp/m9
export XLA_FLAGS=--xla_force_host_platform_device_count=2
for i in 1 2 3; do
  for v in all noarena noarena_sync; do
    python variant.py $v /tmp/exp/m9/m-$v-$i --cases autoencoder-mlp,lstm --peers '' --strategies mesh,pmap --sweep '' --no-peak --steps 40 --rounds 2 2>&1 | grep VARIANT > /tmp/exp/m9/m-$v-$i.rusage
  done
done
echo done > /tmp/exp/m9/MULTIDONE
