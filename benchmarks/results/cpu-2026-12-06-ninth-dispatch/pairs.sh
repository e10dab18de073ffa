#!/bin/bash
# Paired A/B: alternate processes all / noarena_sync, small cases, zoo only.
cd /work/main && . .venv/bin/activate && cd /tmp/exp/m9
for i in 1 2 3 4; do
  for v in all noarena_sync; do
    python variant.py $v /tmp/exp/m9/p-$v-$i --cases autoencoder-mlp,vae-mlp,classifier-mlp,lstm,transformer --peers '' --strategies single --sweep '' --no-peak --steps 60 --rounds 2 2>&1 | grep VARIANT > /tmp/exp/m9/p-$v-$i.rusage
  done
done
echo done > /tmp/exp/m9/PAIRSDONE
