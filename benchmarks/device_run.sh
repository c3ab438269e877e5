#!/usr/bin/env bash
# The one prepared command of a GPU session (issue 12's figures), sized for 15 minutes of device
# time of which about 2 go to starting the machine: the GPU correctness checks, then the benchmark
# with a time budget (ResNet50 at batch 512 first: the >= 150 images/s target), then the projection.
# Everything it prints is also written under $OUT (the device tool brings that folder back).
#
#   run(command="bash benchmarks/device_run.sh", timeout_s=600)
#
# The device image has torch, torchvision, timm, pandas, scipy, yaml and tqdm, which is all that
# paper_code's methods, metrics and these scripts import; the checkout is put on PYTHONPATH.
set -o pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-_build/device}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
{ nvidia-smi; "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; } \
    > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
timeout "${CHECK_SECONDS:-200}" "$PY" benchmarks/device_checks.py 2>&1 | tee "$OUT/checks.txt"
checks=$?
timeout "${BENCH_SECONDS:-330}" "$PY" benchmarks/bench_gpu.py --models resnet50 vgg16_bn \
    --batches 512 256 128 --repeats 1 --bf16 --budget "${BENCH_BUDGET:-200}" 2>&1 \
    | tee "$OUT/bench.txt"
bench=$?
echo "device_checks exit $checks, bench_gpu exit $bench"
exit $(( checks || bench ))
