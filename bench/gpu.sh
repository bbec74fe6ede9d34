#!/usr/bin/env bash
# The CUDA figures of issue 16 in one prepared run, for a machine with a GPU (the README's
# training rows): one GPU at 400 x 400 px in bf16 with the batch probe, then DDP across the
# GPUs where there are several. Run from the repository root after `make install`.
set -euo pipefail
python=${PYTHON:-.venv/bin/python}
"$python" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA here"
for i in range(torch.cuda.device_count()):
    print(i, torch.cuda.get_device_name(i))
PY
"$python" bench/train.py --device cuda --image-size 400 --steps 50 --cells 512 --repeats 2
gpus=$("$python" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -gt 1 ]; then
  "$python" bench/train.py --device cuda --image-size 400 --steps 50 --cells 512 --ddp "$gpus"
fi
