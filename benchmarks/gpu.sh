#!/usr/bin/env bash
# The whole GPU run in one command, results in one folder: the GPU suite (GPT-2 small bf16 MFU,
# DCGAN 64x64, LSTM, VAE, autoencoder; each against PyTorch eager and torch.compile in the same
# run) and nanoGPT's shakespeare_char transformer trained 5,000 steps (validation anchor: 1.4697).
#
#   bash benchmarks/gpu.sh [OUT]       # on the GPU machine; OUT defaults to benchmarks/results/gpu-DATE
#   TOY=1 bash benchmarks/gpu.sh OUT   # the same code path at toy sizes, on any machine (CPU: ~3 min)
#
# Meant for a machine with jax, flax, optax, orbax, chex and torch and nothing else of zoo's: no
# TFDS, TensorFlow or ml_collections, no network. So zoo runs from this checkout (PYTHONPATH), the
# text comes from a raw file, and ml_collections (pure Python; its absl-py and PyYAML are in the
# GPU image) is installed from benchmarks/wheels/ when missing. Before a run through the device
# tool, once, in the repo root (workdirs/ is git-ignored):
#   mkdir -p workdirs/shared/raw && cp -r ../shared/data/raw/tiny_shakespeare workdirs/shared/raw/
# and call it with carry ["workdirs/shared"] and `bash benchmarks/gpu.sh "$OUT/gpu"`.
# Time: at most ~9 minutes (each part has its own timeout).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu-$(date -u +%Y-%m-%d)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/zoo_site \
    benchmarks/wheels/*.whl || { echo "gpu.sh: ml_collections is missing and could not be installed \
from benchmarks/wheels/"; exit 2; }
  export PYTHONPATH=/tmp/zoo_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export ZOO_SHARED_DATA=${ZOO_SHARED_DATA:-$PWD/workdirs/shared}
[ -f "$ZOO_SHARED_DATA/raw/tiny_shakespeare/input.txt" ] || ZOO_SHARED_DATA=$PWD/../shared/data

{ date -u; nvidia-smi || true
  "$PY" -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, 'torch', torch.__version__); print(jax.devices())"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

# nanoGPT's char run trains under bfloat16 autocast; here the layers and the step compute in
# bfloat16 (the residual stream too, unlike autocast: benchmarks/README.md).
CHAR=(--config.train.compute_dtype=bfloat16 --config.model.dtype=bfloat16)
if [ "${TOY:-0}" = 1 ]; then
  SUITE=tiny
  CHAR+=(--config.model.n_layer=1 --config.model.n_head=2 --config.model.n_embd=32
        --config.model.block_size=32 --config.data.seq_len=32 --config.data.batch_size=8
        --config.data.eval_batch_size=8 --config.train.steps=40 --config.train.eval_every=20
        --config.train.checkpoint_every=20 --config.train.log_every=10
        --config.train.sample_tokens=16 --config.optimizer.warmup_steps=4)
else
  SUITE=gpu
fi

# 1. The GPU suite against PyTorch eager and torch.compile (what the bench reports, per case).
timeout 330 "$PY" -m zoo.bench --suite "$SUITE" --torch-compile --sweep '' --out "$OUT/bench" \
  2>&1 | tee "$OUT/bench.log"
bench_status=${PIPESTATUS[0]}

# 2. nanoGPT's shakespeare_char on the raw text (nanoGPT's 90/10 split; no TFDS here).
start=$(date +%s)
timeout 240 "$PY" -m zoo.cli train --config configs/transformer_char_shakespeare.py \
  --workdir "$OUT/char" --config.data.source=raw "${CHAR[@]}" 2>&1 | tee "$OUT/char.log"
char_status=${PIPESTATUS[0]}
echo "char transformer: exit $char_status, $(( $(date +%s) - start )) s wall" | tee -a "$OUT/char.log"
"$PY" - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [json.loads(line) for line in (out / "char" / "metrics.jsonl").open()] \
    if (out / "char" / "metrics.jsonl").is_file() else []
evals = [(r["step"], r["eval"]["loss"]) for r in rows if "eval" in r]
print("char transformer validation loss by step:", evals[-5:], "(nanoGPT: 1.4697 at 5000)")
bench, partial = out / "bench" / "results.md", out / "bench" / "results.partial.json"
if bench.is_file():
    print(bench.read_text())
elif partial.is_file():  # the bench was cut short: the cases it finished
    print("bench cut short; the cases it finished:")
    for r in json.loads(partial.read_text())["records"]:
        ms = r["step_s"]["median"] * 1e3 if r.get("step_s") else None
        print(f"  {r['case']} {r['framework']}/{r.get('strategy')}: "
              + (f"{ms:.2f} ms/step" if ms else r.get("error", "no timing")))
else:
    print("no bench results")
EOF
echo "gpu.sh: bench exit $bench_status, char exit $char_status; results in $OUT"
[ "$bench_status" = 0 ] && [ "$char_status" = 0 ]
