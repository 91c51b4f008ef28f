#!/bin/sh
# featcache-first-head: the one-off job that `docker compose up` runs before `api`. When
# /heads/$FEATCACHE_HEAD (./heads/head by default) holds no head yet, it trains one: on
# ./data/train (one sub-folder per class; ./data/validation is used for validation when it has
# class folders too, else a 20% hold-out) when that exists, else on the demo set built into the
# image (100 faces and 100 non-faces from scikit-image's LFW subset). A head already there is
# left alone, so the next `docker compose up` starts at once. Anything else at that path (a
# folder that is not a head) stops the job with an error: nothing is overwritten.
set -eu
head="/heads/${FEATCACHE_HEAD:-head}"
if [ -f "$head/metadata.json" ]; then
    echo "first-head: $head holds a head already; nothing to train"
    exit 0
fi

has_classes() {  # a folder with at least one (non-hidden) sub-folder
    [ -d "$1" ] && [ -n "$(find "$1" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -print)" ]
}
if has_classes /data/train; then
    train=/data/train validation=/data/validation source="./data/train"
else
    train=/app/demo-data/train validation=/app/demo-data/validation
    source="the demo set built into the image (faces vs non-faces; put class folders in ./data/train to use yours)"
fi
echo "first-head: no head in $head yet; training one on $source"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
extract --dir "$train" --out "$work/train.h5"
if has_classes "$validation"; then
    extract --dir "$validation" --out "$work/validation.h5"
    train-head --cache "$work/train.h5" --val-cache "$work/validation.h5" --out "$head"
else
    train-head --cache "$work/train.h5" --out "$head"
fi
