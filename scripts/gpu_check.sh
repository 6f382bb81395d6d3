#!/usr/bin/env bash
# The prepared one-GPU check (config/gpu_check.yaml): a small digits DAG on CUDA and `eam bench` at the
# SD3-medium and SD1.5 architectures, in about 8 minutes on one H100/H200-class GPU.
#   bash scripts/gpu_check.sh [OUT]        (OUT: where the tables and logs are copied; default results/gpu_check)
# On a GPU machine without PyPI, first run `bash scripts/gpu_wheels.sh` where PyPI is reachable and bring
# .whl/ along: the wheels are installed into /tmp/site and the project runs from this folder.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_check: no CUDA device visible to torch; run this on a GPU machine")
print(f"gpu_check: torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
PY
if [ -d .whl ] && ! python3 -c "import diffusers, snakemake" 2> /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! command -v eam > /dev/null; then  # the rules call `eam`: run the package from this folder
  mkdir -p /tmp/eam-bin
  printf '#!/bin/sh\nexec python3 -m eam.cli "$@"\n' > /tmp/eam-bin/eam
  chmod +x /tmp/eam-bin/eam
  export PATH="/tmp/eam-bin:$PATH" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" || true
start=$(date +%s)
status=0
python3 -m snakemake --cores "$(nproc)" --configfile config/gpu_check.yaml --resources gpu=1 --keep-going \
  --show-failed-logs all 2>&1 | tee "$OUT/snakemake.log" || status=$?
echo "gpu_check: DAG finished with status $status in $(( $(date +%s) - start )) s" | tee -a "$OUT/snakemake.log"
for f in results/digits/report/verdict.md results/digits/report/table.md \
         results/bench/sd3-medium/bench.md results/bench/sd15/bench.md; do
  if [ -f "$f" ]; then
    name=$(echo "${f#results/}" | tr / _)
    cp "$f" "$OUT/$name"
    printf '\n== %s ==\n' "$f"
    cat "$f"
  fi
done
exit "$status"
