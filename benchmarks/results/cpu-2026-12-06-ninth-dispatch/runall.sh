#!/bin/bash
cd /work/main && . .venv/bin/activate && cd /tmp/exp/m9
for i in 1 2 3; do
  for v in all noarena_sync; do
    python variant.py $v /tmp/exp/m9/q-$v-$i 2>&1 | grep VARIANT > /tmp/exp/m9/q-$v-$i.rusage
  done
  for v in all noarena_sync; do
    python variant.py $v /tmp/exp/m9/f-$v-$i --suite full --strategies single --peers eager --sweep '' 2>&1 | grep VARIANT > /tmp/exp/m9/f-$v-$i.rusage
  done
  for v in all noarena_sync; do
    python variant.py $v /tmp/exp/m9/l-$v-$i --loop 2>&1 | grep VARIANT > /tmp/exp/m9/l-$v-$i.rusage
  done
done
echo done > /tmp/exp/m9/ALLDONE
