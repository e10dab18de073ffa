#!/bin/bash
# Three rounds of the loop, quick and full suites, interleaved, through the real commands.
cd /work/main && . .venv/bin/activate
D=benchmarks/results/cpu-2026-12-06-tenth
for i in 1 2 3; do
  echo "round $i $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  zoo bench --loop --no-plots --out $D/loop-run$i > /tmp/b10-loop$i.log 2>&1
  zoo bench --no-plots --out $D/quick-run$i > /tmp/b10-quick$i.log 2>&1
  zoo bench --suite full --strategies single --peers eager --sweep '' --no-plots --out $D/full-run$i > /tmp/b10-full$i.log 2>&1
done
echo "done $(date +%T)"
