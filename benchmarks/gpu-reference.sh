#!/usr/bin/env bash
# Is the SSL decline on clean CIFAR-10 (issue 8's H200 table: gmm 82.9 -> 76.0
# while ce 82.9 -> 90.1) hallnll's or DivideMix's own? One GPU command: DivideMix's
# training loop transcribed (benchmarks/dividemix_reference.py), one network
# (= hallnll's variant gmm) and cross-entropy, on all 50,000 clean CIFAR-10
# (JPEG q75 copy) training images, full-width PreActResNet-18, the schedule of
# that table (30 epochs, 10 warm-up, lr / 10 at epoch 25), both at once.
# Writes dm1.json, dm0.json and their logs to OUTDIR.
#
#   usage: benchmarks/gpu-reference.sh OUTDIR            # on the GPU machine, data staged in .data
#          benchmarks/gpu-reference.sh OUTDIR --dry-run  # anywhere: 600 images, 3 epochs, the CPU
set -uo pipefail
out=${1:?usage: benchmarks/gpu-reference.sh OUTDIR [--dry-run]}
mode=${2:-}
source "$(dirname "$0")/gpu-common.sh"
gpu_setup "$out"
labels=.data/noisy-labels/cifar10-classification-idn/dependent0.4.csv
if [ "$mode" = "--dry-run" ]; then
  root=${C10:-/tmp/c10}
  labels=${LABELS:-../shared/data/noisy-labels/cifar10-classification-idn/dependent0.4.csv}
  args=(--device cpu --set train_subset=600 --set test_subset=300 --set width=8 --epochs 3 --warm-up 2 --decay 2)
else
  root=/tmp/c10
  materialize_c10 || exit 1
  nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.txt" 2>&1 || true
  args=(--device cuda --set train_subset=0 --set test_subset=0 --set width=0 --epochs 30 --warm-up 10 --decay 25)
fi
# REF_SECONDS caps each run; the JSON is rewritten every epoch, so a run cut short still reports
status=0
pids=()
for nets in 1 0; do
  timeout "${REF_SECONDS:-480}" python3 benchmarks/dividemix_reference.py --data-root "$root" --noise-file "$labels" \
    --labels clean --nets $nets "${args[@]}" --out "$out/dm$nets.json" > "$out/dm$nets.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || status=$?; done
for nets in 1 0; do tail -n 2 "$out/dm$nets.log"; done
exit $status
