#!/usr/bin/env bash
# The CUDA figures in one prepared run, for a machine with a GPU (the README's training and
# whole-scan classification rows): one GPU at 400 x 400 px in bf16 with the batch probe, DDP
# across the GPUs where there are several, then a scan's leukocytes classified on CPU and GPU
# (needs PostgreSQL, as every bench/ script with a database). Run from the repository root after `make install`.
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
"$python" bench/classify_scan.py --size 20000 --cells 2000 --folds 5 --devices cuda --repeats 2
"$python" bench/classify_scan.py --size 8000 --cells 100 --folds 5 --devices cpu --repeats 1
