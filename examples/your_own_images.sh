#!/bin/sh
# The README's "Your own images" example, end to end (run from the repository root after `make setup`).
set -e
PY=.venv/bin/python
LAB=.venv/bin/alexnet-lab
OUT=${OUT:-runs/shapes}
$PY tests/imagedata.py shapes --per-class 300 --seed 0
$LAB train --data imagefolder:shapes --preset speedrun --epochs 20 --batch-size 64 --weight-decay 5e-4 \
    --augment --out "$OUT"
$LAB evaluate --checkpoint "$OUT/checkpoint.pt" --precision fp32
$LAB predict --checkpoint "$OUT/checkpoint.pt" shapes/star/star_0001.bmp shapes/ring/ring_0002.png shapes/cross/cross_0003.webp
$LAB export --checkpoint "$OUT/checkpoint.pt" --format onnx --out "$OUT/shapes.onnx"
$LAB export --checkpoint "$OUT/checkpoint.pt" --format pt2 --out "$OUT/shapes.pt2"
$LAB export --checkpoint "$OUT/checkpoint.pt" --format safetensors --out "$OUT/shapes.safetensors"
$LAB predict --model-file "$OUT/shapes.onnx" shapes/star/star_0001.bmp shapes/ring/ring_0002.png shapes/cross/cross_0003.webp
