#!/usr/bin/env bash
# The one prepared command of a GPU session, sized for 15 minutes of device time of which about 2
# go to starting the machine. Three stages, each with its own time limit, everything printed also
# written under $OUT (the device tool brings that folder back):
#   1. the GPU correctness checks (benchmarks/device_checks.py);
#   2. the rehearsal of the paper-scale path on the GPU with real settings on a few images: every
#      page of the GPU profiles on ResNet50, VGG16-BN, ViT-B and DeiT-B (random weights, synthetic
#      ILSVRC2012 folder), 100 Opti-CAM iterations, Score-CAM and Ablation-CAM included; then the
#      seconds per image of every page and the projected time of imagenet-1k and imagenet
#      (benchmarks/rehearsal_report.py). Needs the wheels of benchmarks/device_wheels.sh, carried;
#   3. the throughput benchmark with a time budget (ResNet50 at batch 512 first).
#
#   bash benchmarks/device_wheels.sh                                    # here, once
#   run(command="bash benchmarks/device_run.sh", carry=[".whl"], timeout_s=600)
#
# The device image has torch, torchvision, timm, pandas, scipy, matplotlib, scikit-image,
# scikit-learn, yaml and tqdm; the checkout is put on PYTHONPATH, the carried wheels in /tmp/site.
set -o pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-_build/device}"
WORK="${WORK:-/tmp/paper_code_device}"
mkdir -p "$OUT" "$WORK"
PY="${PYTHON:-python3}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi; "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; } \
    > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

timeout "${CHECK_SECONDS:-150}" "$PY" benchmarks/device_checks.py 2>&1 | tee "$OUT/checks.txt"
checks=$?

# Stage 2: the rehearsal. A page that is not finished when the time is up is simply missing from
# the report (timings.json is written after every page); rerunning resumes where it stopped.
rehearsal=0
if "$PY" -c "import papermill, jupytext, ipykernel, lime, captum" 2>/dev/null; then
    timeout "${REHEARSAL_SECONDS:-240}" "$PY" -m paper_code rehearse --out "$WORK/rehearsal" \
        --no-build -p device cuda -p n_images "${REHEARSAL_IMAGES:-64}" -p iterations 100 \
        -p study_iterations 50 -p methods null -p method_options null -p batch_size 64 \
        -p id_step 224 -p ms_samples 10 -p ms_methods null -p adcc_methods null 2>&1 \
        | tee "$OUT/rehearsal_log.txt"
    rehearsal=$?
    "$PY" benchmarks/rehearsal_report.py "$WORK/rehearsal" 2>&1 | tee "$OUT/rehearsal.txt"
    cp "$WORK/rehearsal/timings.json" "$OUT/rehearsal_timings.json" 2>/dev/null
else
    echo "rehearsal skipped: papermill/jupytext/ipykernel/lime/captum missing (carry .whl:" \
         "bash benchmarks/device_wheels.sh)" | tee "$OUT/rehearsal.txt"
fi

timeout "${BENCH_SECONDS:-180}" "$PY" benchmarks/bench_gpu.py --models resnet50 vgg16_bn \
    --batches 512 256 128 --repeats 1 --bf16 --budget "${BENCH_BUDGET:-120}" 2>&1 \
    | tee "$OUT/bench.txt"
bench=$?
echo "device_checks exit $checks, rehearsal exit $rehearsal, bench_gpu exit $bench"
exit $(( checks || bench ))
