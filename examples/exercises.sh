#!/usr/bin/env bash
# Every measurement behind docs/EXERCISES.md, in order of cost; results land in runs/exercises/.
# Usage: examples/exercises.sh [step...]   (steps: best alexnet lenet ex1 sweep profile; default: all)
# Set ALEXNET_LAB to the command to use (default: alexnet-lab).
set -euo pipefail
cd "$(dirname "$0")/.."
AL=${ALEXNET_LAB:-alexnet-lab}
OUT=${EXERCISES_OUT:-runs/exercises}
mkdir -p "$OUT"
steps=${*:-best alexnet lenet ex1 sweep profile}
# The recipe shared by exercise 2.1's two models (SGD momentum, one-cycle, bf16 where fast, NHWC).
FAST="--momentum 0.9 --schedule onecycle --lr 0.02 --precision auto --channels-last"

for step in $steps; do
  echo "=== $step $(date -u +%H:%M:%S)"
  case $step in
    best)    # exercise 2.2: fmnist-net, >= 94% in 15 minutes on a 2-core CPU
      rm -rf "$OUT/fmnist-best"; $AL train --preset best --epochs 10 --label-smoothing 0.1 --tta none --eval-every 1 --log-points-per-epoch 5 --out "$OUT/fmnist-best" ;;
    alexnet) # exercise 2.1: alexnet-small vs alexnet, same recipe, one epoch of the first 20,000 images
      rm -rf "$OUT/alexnet-small-1ep" "$OUT/alexnet-1ep"
      $AL train --model alexnet-small --epochs 1 --limit-train 20000 $FAST --out "$OUT/alexnet-small-1ep"
      $AL train --model alexnet --epochs 1 --limit-train 20000 $FAST --out "$OUT/alexnet-1ep"
      $AL compare "$OUT/alexnet-1ep" "$OUT/alexnet-small-1ep" --out "$OUT/compare-alexnet-small" \
        --title "exercise 2.1: alexnet vs alexnet-small, 20,000 images" ;;
    lenet)   # exercise 5: lenet (book recipe), lenet-modern, lenet-modern + augmentation; 10 epochs each
      rm -rf "$OUT"/lenet-*
      $AL train --model lenet --epochs 10 --lr 0.9 --out "$OUT/lenet-d2l"
      $AL train --model lenet --epochs 10 --lr 0.1 --momentum 0.9 --schedule onecycle --out "$OUT/lenet-onecycle"
      $AL train --model lenet-modern --epochs 10 --lr 0.1 --momentum 0.9 --schedule onecycle --out "$OUT/lenet-modern"
      $AL train --model lenet-modern --epochs 10 --lr 0.1 --momentum 0.9 --schedule onecycle --augment \
        --out "$OUT/lenet-modern-augment"
      $AL compare "$OUT/lenet-d2l" "$OUT/lenet-onecycle" "$OUT/lenet-modern" "$OUT/lenet-modern-augment" \
        --out "$OUT/compare-lenet" --title "exercise 5: LeNet variants, 10 epochs" ;;
    ex1)     # exercise 1: more epochs, AlexNet vs LeNet, on the first 2,000 training images
      rm -rf "$OUT"/ex1-*
      $AL train --model alexnet --epochs 10 --limit-train 2000 --limit-test 2000 $FAST --out "$OUT/ex1-alexnet"
      $AL train --model alexnet --epochs 30 --limit-train 2000 --limit-test 2000 $FAST --out "$OUT/ex1-alexnet-30"
      $AL train --model lenet --epochs 10 --lr 0.9 --limit-train 2000 --limit-test 2000 --out "$OUT/ex1-lenet-10"
      $AL train --model lenet --epochs 100 --lr 0.9 --limit-train 2000 --limit-test 2000 --out "$OUT/ex1-lenet-100"
      $AL compare "$OUT/ex1-alexnet" "$OUT/ex1-alexnet-30" "$OUT/ex1-lenet-10" "$OUT/ex1-lenet-100" \
        --labels "alexnet 10 ep,alexnet 30 ep,lenet 10 ep,lenet 100 ep" --out "$OUT/compare-ex1" \
        --title "exercise 1: AlexNet vs LeNet, 2,000 training images" ;;
    sweep)   # exercise 3: batch sizes 32..512, alexnet-small, 1 epoch of the first 10,000 images
      rm -rf "$OUT/sweep"
      $AL sweep --batch-sizes 32,64,128,256,512 --model alexnet-small --epochs 1 --limit-train 10000 \
        $FAST --out "$OUT/sweep" ;;
    profile) # exercise 4: AlexNet's per-layer costs, at batch 1 and at the book's batch 128
      $AL profile --model alexnet --plot "$OUT/profile-alexnet-b1.png" --json > "$OUT/profile-alexnet-b1.txt"
      $AL profile --model alexnet --batch-size 128 --plot "$OUT/profile-alexnet-b128.png" --json \
        > "$OUT/profile-alexnet-b128.txt"
      $AL profile --model alexnet --batch-size 128 --precision auto --channels-last \
        --plot "$OUT/profile-alexnet-b128-bf16.png" --json > "$OUT/profile-alexnet-b128-bf16.txt" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
echo "=== done $(date -u +%H:%M:%S)"
