#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the repo root (after benchmarks/gpu/prepare.sh here; carry .gpu_site).
# Writes the results files into the tree (benchmarks/results/peers/cuda_*.{md,json},
# benchmarks/results/precision/cuda.{md,json}, benchmarks/results/export/ceilings_cuda.{md,json}), each
# recording its own command, commit, date, torch, device and cores, and copies them and a log to $OUT
# (9 files). Expected: about 7 minutes on an H100; the export step is last and has the shortest limit.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$PWD/.gpu_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
BENCH_GIT_COMMIT=$(cat .gpu_site/COMMIT 2>/dev/null || echo unknown)
BENCH_GIT_DIRTY=$(cat .gpu_site/DIRTY 2>/dev/null || echo unknown)
export BENCH_GIT_COMMIT BENCH_GIT_DIRTY
out=${OUT:-/tmp/camkit-gpu}
mkdir -p "$out"
log="$out/gpu_log.txt"
{
  date -Is
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, torchvision, pytorch_grad_cam, torchcam, captum; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
} >"$log" 2>&1
step() {  # step SECONDS CMD...: run, log, keep going on failure
  local limit=$1; shift
  echo "=== $(date +%T) $* (limit ${limit}s)" | tee -a "$log"
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$log" 2>&1
  echo "=== rc=$? after $((SECONDS - t0)) s" | tee -a "$log"
}
step 200 python3 -m benchmarks.peers --device cuda --arch resnet50
step 160 python3 -m benchmarks.peers --device cuda --arch vgg16
step 100 python3 -m benchmarks.precision --device cuda
# export on the GPU (issue 25 item 4): nvjpeg batch decoding + GPU resize against decode-only and
# model-only in one run; 1024 JPEGs cut from the bundled photos (Flower-17 is not on the device machine),
# torchvision ResNet50 with random weights (no weights package needed on the device)
step 120 python3 -m benchmarks.export ceilings --device cuda --synthetic 1024 --model resnet50 --batch-size 128 \
  --workers 8 --threads 1 --rounds 2 --model-batches 8
for f in benchmarks/results/peers/cuda_resnet50 benchmarks/results/peers/cuda_vgg16; do
  cp "$f.md" "$f.json" "$out/" 2>/dev/null
done
cp benchmarks/results/precision/cuda.md "$out/precision_cuda.md" 2>/dev/null
cp benchmarks/results/precision/cuda.json "$out/precision_cuda.json" 2>/dev/null
cp benchmarks/results/export/ceilings_cuda.md benchmarks/results/export/ceilings_cuda.json "$out/" 2>/dev/null
tail -c 3000 "$log"
