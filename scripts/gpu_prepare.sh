#!/bin/bash
# Issue 17, step 0 (here, on the CPU machine): what the GPU machine lacks, into ignored folders the device
# tool carries — pure-Python wheels (.whl/) and Fashion-MNIST (data/fashion-mnist/). Then, on the device:
#   run(command="bash scripts/gpu_session.sh", carry=[".whl", "data"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl data
pip wheel -q --no-deps -w .whl hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 \
    hydra-joblib-launcher==1.2.0 PyYAML
pip wheel -q --no-deps --no-build-isolation -w .whl .          # mixlab itself
for v in 3.10 3.11 3.12 3.13; do  # puzzlemix's graph cut: a binary wheel per Python, the device's picked there
    pip download -q --no-deps --only-binary :all: --python-version "$v" -d .whl/maxflow PyMaxflow==1.3.2
done
cp -r /usr/share/datasets/fashion-mnist data/
du -sh .whl data
