#!/usr/bin/env bash
# The GPU command of the Clothing1M issue (issue 20): one warm-up and one SSL epoch of the
# real Clothing1M path (params/clothing1m.yaml: ResNet-50, 224 px crops of 256 px images,
# DivideMix's 1,000-batch epoch, two co-trained networks) on synthetic JPEGs of the real
# size, timed step by step; at most 9 minutes on one H100/H200 with 16 CPU cores.
#
#   benchmarks/gpu-clothing1m.sh OUTDIR              # on the GPU machine, from the repository root
#   benchmarks/gpu-clothing1m.sh --dry-run OUTDIR    # the same steps on the CPU: tiny tree, small CNN
#
# 1. tree    a Clothing1M-shaped folder under /tmp/c1m (the official file names and formats):
#            72,000 training keys (64,000 are drawn in the warm-up epoch), 14,000 validation,
#            10,000 test, as 3,000 distinct JPEGs of ~440x490 px (~57 KB, quality 90) hard-linked
#            under the other keys (the page cache then holds them: decoding is timed, the disk is not)
# 2. epochs  hallnll train clothing1m, nets=2, pretrained= (random init: no weights needed),
#            epochs=2 (1 warm-up, 1 SSL), loader_workers=14; metrics.jsonl has the seconds of
#            every step (warmup, easiness, select_easy, hallucinate, select_hard, ssl, bn_recal, eval)
#            The JPEGs are decoded on the GPU (jpeg_decode=auto: nvJPEG); JPEG_DECODE=workers
#            benchmarks/gpu-clothing1m.sh OUTDIR times the CPU workers' decoding instead.
# Files written to OUTDIR: env.txt, tree.log, train.log, metrics.jsonl, summary.json, seconds.json.
set -uo pipefail
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:?usage: benchmarks/gpu-clothing1m.sh [--dry-run] OUTDIR}
source "$(dirname "${BASH_SOURCE[0]}")/gpu-common.sh"
gpu_setup "$OUT"
PY=${PYTHON:-python3}

if [ $DRY = 1 ]; then
  TREE=$out/c1m; N=(300 70 70 60 40 3); SETS=(image_size=32 resize_size=36 arch=small_cnn width=8 batch_size=16
    epoch_batches=4 loader_workers=2 bn_recal_images=64 eval_batch_size=128); LIM=600
else
  TREE=/tmp/c1m; N=(72000 14000 10000 3000 400 16); SETS=(loader_workers=14); LIM=400
fi
{ nvidia-smi 2>/dev/null; $PY -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)"; nproc; } \
  > "$out/env.txt" 2>&1

timeout 120 $PY - "$TREE" "${N[@]}" > "$out/tree.log" 2>&1 <<'EOF'
import sys, time
from pathlib import Path
from hallnll.data.clothing1m import write_synthetic_tree
root, (n_tr, n_va, n_te, distinct, side, _) = sys.argv[1], map(int, sys.argv[2:])
if not (Path(root) / "clean_test_key_list.txt").is_file():
    t = time.perf_counter()
    write_synthetic_tree(root, n_tr, n_va, n_te, side=side, distinct=distinct, seed=0)
    print(f"wrote {root}: {n_tr}/{n_va}/{n_te} keys, {distinct} distinct JPEGs, {time.perf_counter() - t:.1f} s")
EOF
echo "tree: rc=$?" | tee -a "$out/tree.log"

args=()
for s in data_root=$TREE pretrained= nets=2 epochs=2 warmup_epochs=1 lr_decay_epoch=0 progress=false \
         checkpoint_every=0 threads=4 jpeg_decode=${JPEG_DECODE:-auto} "${SETS[@]}"; do args+=(--set "$s"); done
timeout $LIM $PY -m hallnll train clothing1m "${args[@]}" --out "$out/run" > "$out/train.log" 2>&1
echo "train: rc=$?" | tee -a "$out/train.log"
cp "$out/run/metrics.jsonl" "$out/run/summary.json" "$out/" 2>/dev/null
$PY - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()] if (out / "metrics.jsonl").is_file() else []
res = [{"epoch": r["epoch"], "phase": r["phase"], "images": r.get("n_drawn"), **r["seconds"]} for r in rows]
(out / "seconds.json").write_text(json.dumps(res, indent=1) + "\n")
print(json.dumps(res, indent=1))
EOF
