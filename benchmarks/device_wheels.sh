#!/usr/bin/env bash
# Wheels for the GPU rehearsal: the packages the book's notebooks need that the device image lacks
# (papermill, jupytext, the Jupyter kernel, LIME, Captum); the image has torch, torchvision, timm,
# numpy, pandas, scipy, matplotlib, seaborn, scikit-image, scikit-learn, pyyaml, tqdm and the rest.
# Run here once, then carry the folder:
#   bash benchmarks/device_wheels.sh        # writes .whl/ (about 17 MB; ignored by git)
#   run(command="bash benchmarks/device_run.sh", carry=[".whl"], timeout_s=600)
# device_run.sh installs them with pip --no-index into /tmp/site when .whl/ is there.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_26_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p "$DEST"
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$DEST" papermill jupytext ipykernel nbformat nbclient
# No dependencies: lime's (scikit-image, scikit-learn, scipy, numpy, matplotlib, tqdm) and
# Captum's (torch, numpy, matplotlib, packaging, tqdm) are on the device image.
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" --no-deps -d "$DEST" lime captum
# The device image has these already: a second version in /tmp/site would shadow its own.
for name in attrs certifi charset_normalizer click idna markdown_it_py mdurl packaging psutil \
            pygments python_dateutil pyyaml PyYAML requests tqdm typing_extensions urllib3 tzdata \
            six numpy; do
    rm -f "$DEST/${name}"-[0-9]*.whl
done
ls "$DEST" | wc -l
du -sh "$DEST"
