#!/usr/bin/env bash
# The fidelity check on one GPU, in one command of at most 9 minutes (issue 8):
# materialise the CIFAR-10 copy, one bench epoch, then the Table 5 variants
# ce / gmm / hallnll side by side on clean labels and on the published C-based
# 40% labels (PreActResNet-18, bf16 + channels_last, batch 128, 30 epochs:
# 10 warm-up, lr / 10 at 25: the schedule of the 2026-11-26 H200 table), all
# six runs at once on the one GPU. Writes at most 8 files to OUTDIR:
# bench.json, bench.log, fidelity.log, fidelity.md, fidelity.json (per-epoch
# test accuracy, selection and the checks), metrics.tar.gz (every run's
# metrics.jsonl, config.yaml, summary.json). fidelity.md/json also give the
# hallnll cells' anchor geometry of the last epoch (issue 17: cos(s_a, s_u),
# cos(s_a, s_v), cos(s_u, s_v), L_clo's optimum, norm ratio, g_rho's p(y_u)/p(y_v)
# at the anchor's and at the real norm, within-class spread, parent specificity,
# distinct nearest hard samples); every epoch's are in metrics.jsonl (hal_*).
#
#   usage: benchmarks/gpu-check.sh OUTDIR            # on the GPU machine, data staged in .data
#          benchmarks/gpu-check.sh OUTDIR --dry-run  # anywhere: digits, 3 epochs, the same wiring
#
# On the device: stage first here with `../shared/tools/stage-gpu-data .data`
# and carry .data; the script materialises it to /tmp/c10 itself.
# FIDELITY_SECONDS (default 420) caps the grid; a cut-short grid is still
# reported from the epochs written (fidelity --report-only).
set -uo pipefail
out=${1:?usage: benchmarks/gpu-check.sh OUTDIR [--dry-run]}
mode=${2:-}
source "$(dirname "$0")/gpu-common.sh"
gpu_setup "$out"
runs=$(mktemp -d)
budget=${FIDELITY_SECONDS:-420}
if [ "$mode" = "--dry-run" ]; then
  params=digits-quick
  sets=(--set epochs=3 --set warmup_epochs=2 --set lr_decay_epoch=0 --set checkpoint_every=1)
  bench=(--set dataset=digits --set arch=small_cnn --epochs 1)
  note="digits (dry run)"
else
  materialize_c10 || exit 1
  params=cifar10-cbased-40
  sets=(--set data_root=/tmp/c10 --set arch=preact_resnet18 --set epochs=30 --set warmup_epochs=10
        --set lr_decay_epoch=25 --set checkpoint_every=1)
  bench=(--params cifar10-cbased-40 --set data_root=/tmp/c10 --set arch=preact_resnet18 --epochs 1)
  note="CIFAR-10 (JPEG q75 copy)"
  nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/bench.log" 2>&1 || true
fi
python3 -m hallnll bench "${bench[@]}" --json "$out/bench.json" >> "$out/bench.log" 2>&1 || echo "bench failed (see bench.log)"
timeout "$budget" python3 -m hallnll fidelity --params "$params" "${sets[@]}" --variants ce,gmm,hallnll \
  --parallel 6 --out "$runs" --data-note "$note" > "$out/fidelity.log" 2>&1
status=$?
if [ $status -ne 0 ]; then
  echo "fidelity stopped (status $status); reporting the epochs written" >> "$out/fidelity.log"
  python3 -m hallnll fidelity --params "$params" "${sets[@]}" --variants ce,gmm,hallnll --out "$runs" \
    --data-note "$note (cut short at ${budget} s)" --report-only >> "$out/fidelity.log" 2>&1
fi
cp "$runs/fidelity.md" "$runs/fidelity.json" "$out/" 2>/dev/null
(cd "$runs" && tar czf "$out/metrics.tar.gz" --exclude='*.pt' --exclude='*.csv' .)
ls "$out"
exit $status
