#!/usr/bin/env bash
# One-time set-up on a fresh Linux machine with Python 3.11 and pip (root for apt).
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Real Fashion-MNIST from Debian where apt is available (offline-friendly); elsewhere
# mixlab falls back to torchvision's download at first use.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
        || echo "setup: could not install dataset-fashion-mnist with apt; torchvision will download it"
fi

# Jane Austen's novels (data=austen) from Debian's r-cran-janeaustenr, unpacked without installing R.
AUSTEN=${HOME}/.cache/mixlab/janeaustenr
if [ ! -e "$AUSTEN/usr/lib/R/site-library/janeaustenr/data/Rdata.rdx" ] && [ ! -e /usr/lib/R/site-library/janeaustenr/data/Rdata.rdx ] \
        && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    ( tmp=$(mktemp -d) && cd "$tmp" && { apt-get download r-cran-janeaustenr >/dev/null 2>&1 \
          || { apt-get update -qq && apt-get download r-cran-janeaustenr; } >/dev/null 2>&1; } \
      && mkdir -p "$AUSTEN" && dpkg -x r-cran-janeaustenr_*.deb "$AUSTEN" && rm -rf "$tmp" ) \
        || echo "setup: could not fetch r-cran-janeaustenr with apt; data=austen needs it (see README)"
fi

# torch and torchvision must be a matched pair from the package index: a CPU-only torch
# wheel from a local find-links folder cannot load PyPI's torchvision. The CUDA build runs on CPU.
TORCH=${MIXLAB_TORCH:-2.11.0}
TORCHVISION=${MIXLAB_TORCHVISION:-0.26.0}
if ! $PY -c "import torch, torchvision, sys; sys.exit(not (torch.__version__.split('+')[0] == '$TORCH' and torchvision.__version__.split('+')[0] == '$TORCHVISION'))" 2>/dev/null; then
    PIP_FIND_LINKS=" " $PY -m pip install -q "torch==$TORCH" "torchvision==$TORCHVISION"
fi
$PY -m pip install -q -e ".[test]"
