#!/usr/bin/env bash
# README "Best accuracy": every image and its 7 flips and quarter turns through the conv base,
# train-head's default on them, probabilities averaged over the same 8 views at prediction.
#   examples/best_accuracy.sh TRAIN_DIR VALIDATION_DIR WORK_DIR
set -euo pipefail
train=$(cd "$1" && pwd)   # absolute paths: the steps run in WORK_DIR
val=$(cd "$2" && pwd)
work=$3
mkdir -p "$work" && cd "$work"

extract --dir "$train" --out t.h5 --augment 7 --augment-mode dihedral
extract --dir "$val" --out v.h5 --augment 7 --augment-mode dihedral
train-head --cache t.h5 --val-cache v.h5 --out heads/best
evaluate --head heads/best --cache v.h5 --json
