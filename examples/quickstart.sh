#!/usr/bin/env bash
# The featcache commands end to end: extract, train, evaluate, predict, describe.
#   examples/quickstart.sh TRAIN_DIR VALIDATION_DIR NEW_IMAGES_DIR WORK_DIR
set -euo pipefail
train=$1 val=$2 new=$3 work=$4
mkdir -p "$work"

featcache extract --dir "$train" --out "$work/train.h5"      # one sub-folder per class
featcache extract --dir "$val" --out "$work/val.h5"
featcache train-head --cache "$work/train.h5" --val-cache "$work/val.h5" \
  --out "$work/heads/first" --force
featcache evaluate --head "$work/heads/first" --cache "$work/val.h5"
featcache predict --head "$work/heads/first" --dir "$new" --out "$work/predictions.csv"
featcache info "$work/train.h5"                               # datasets, classes, spec, ...
featcache info "$work/heads/first"                            # kind, features, metrics, CV

# --json: the end-of-run summary of any command (but serve), for scripts
featcache evaluate --head "$work/heads/first" --cache "$work/val.h5" --json \
  | python3 -c 'import json, sys; print("validation accuracy:", json.load(sys.stdin)["accuracy"])'
