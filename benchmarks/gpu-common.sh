# Sourced by the GPU commands of this folder (gpu-check.sh, gpu-reference.sh, gpu-speed.sh):
# the steps they share, written once.

# gpu_setup OUTDIR: create OUTDIR and set $out to its absolute path; set $here to the
# repository root, cd there and put it on PYTHONPATH (unbuffered Python output for the logs).
gpu_setup() {
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  mkdir -p "$1"
  out=$(cd "$1" && pwd)
  cd "$here"
  export PYTHONPATH=$here${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
}

# materialize_c10 [PYTHON]: write the staged CIFAR-10 JPEG copy (.data, from
# ../shared/tools/stage-gpu-data) as /tmp/c10/cifar-10-batches-py, unless its last
# batch file is already there; run from the repository root. Non-zero on failure.
materialize_c10() {
  [ -f /tmp/c10/cifar-10-batches-py/data_batch_5 ] && return 0
  "${1:-python3}" .data/materialize_cifar10.py .data/cifar10-jpeg /tmp/c10
}
