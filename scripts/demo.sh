#!/usr/bin/env bash
# The demo: synthetic data -> VICRegL pretraining (the miniature: docs/miniature.md) -> k-NN, linear probe,
# frozen linear segmentation and the dense protocols (in-context retrieval, k-means) of the pretrained backbone
# and of a random-init one (BatchNorm re-estimated) -> one summary table (OUT/summary.json). Detection runs as a
# pipeline check. Also draws the matches the local criterion keeps (OUT/matches.png), the PCA maps of both
# backbones (OUT/pca.png) and the training / sweep curves (OUT/plots/). About 9 minutes on 2 idle CPU cores.
# Usage: bash scripts/demo.sh [OUT] [SEED]   (SEED draws the synthetic data, the pretraining and the random init)
set -euo pipefail
OUT=${1:-demo_out}
SEED=${2:-0}
VICREGL=${VICREGL:-.venv/bin/vicregl}
PYTHON=${PYTHON:-.venv/bin/python}
rm -rf "$OUT"
mkdir -p "$OUT/logs"
SYNTH=$OUT/synth
PRETRAINED=$OUT/pretrain/backbone.pth
BASELINE=$OUT/random_init/backbone.pth
FEATURES=(--image-size 48 --resize 48 --batch-size 200 --workers 0 --no-cache --device cpu --seed "$SEED")
# Dense protocols at 96 px (12 x 12 patches; at the native 48 px, 6 x 6, the local features barely show), the
# retrieval memory 10^4 patches of one plain view per training image (deterministic: the same for both)
DENSE=(--dataset voc --data "$SYNTH/VOC2012" --input-size 96 --batch-size 100 --workers 0 --seed "$SEED"
    --device cpu)

# One line per step; the step's own output (tables) follows, its logs and warnings go to OUT/logs/<step>.log.
step() {
    local name=$1
    shift
    printf '\n\033[1m== %s\033[0m (log: %s)\n' "$name" "$OUT/logs/$name.log"
    "$@" 2>>"$OUT/logs/$name.log"
}
both() {  # both FOLDER COMMAND...: `vicregl COMMAND...` on the pretrained and the random-init backbone
    local folder=$1
    shift
    step "$folder (pretrained)" "$VICREGL" "$@" --weights "$PRETRAINED" --out "$OUT/$folder/pretrained"
    step "$folder (random init)" "$VICREGL" "$@" --weights "$BASELINE" --out "$OUT/$folder/random"
}

step synth "$VICREGL" synth --out "$SYNTH" --num-train 2000 --num-val 600 --image-size 48 --seed "$SEED"
step pretrain "$VICREGL" pretrain --config demo --data "$SYNTH/classification/train" \
    --out "$OUT/pretrain" --seed "$SEED" --device cpu
step matches "$VICREGL" matches --weights "$OUT/pretrain/checkpoint.pth" \
    --image "$SYNTH/VOC2012/JPEGImages/val_000000.jpg" --seed "$SEED" --out "$OUT/matches.png"
step "random init (BatchNorm re-estimated)" "$PYTHON" scripts/demo_random_init.py resnet10_small_w16 "$SEED" \
    "$SYNTH/classification/train" 48 "$BASELINE"
both knn knn --data "$SYNTH/classification" --k 20 200 "${FEATURES[@]}"
both linear linear --cached --data "$SYNTH/classification" --lr 1 0.3 0.1 --epochs 30 "${FEATURES[@]}"
both segment segment --dataset voc --data "$SYNTH/VOC2012" --protocol linear --frozen --lr 0.1 --iters 1000 \
    --batch-size 16 --crop-size 48 --workers 0 --seed "$SEED" --device cpu
both dense-retrieval dense --protocol retrieval --memory-size 10000 --no-augment "${DENSE[@]}"
# K = 13 (the 12 classes and background) only: overclustering is the slow part of k-means here
both dense-kmeans dense --protocol kmeans --clusters 13 "${DENSE[@]}"
step pca "$VICREGL" pca --weights "$PRETRAINED" --weights "$BASELINE" --image-size 96 --out "$OUT/pca.png" \
    "$SYNTH"/VOC2012/JPEGImages/val_00000{0,1,2,3}.jpg
step "detect (pipeline check: random-init resnet18)" "$VICREGL" detect --weights random --backbone resnet18 \
    --dataset voc --data "$SYNTH/VOC2012" --engine torchvision --iters 10 --batch-size 2 --rois-per-image 16 \
    --proposals-test 20 --precise-bn-iters 2 --workers 0 --seed "$SEED" --device cpu --out "$OUT/detect"
step plots "$VICREGL" report "$OUT/pretrain" "$OUT/linear" --plots "$OUT/plots" --title "demo runs"
printf '\n\033[1m== summary\033[0m\n'
"$PYTHON" scripts/demo_summary.py "$OUT" "$SEED"
