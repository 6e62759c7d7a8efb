#!/usr/bin/env bash
# The demo: synthetic data -> VICRegL pretraining -> k-NN, linear, segmentation and detection evaluations of the
# pretrained backbone and of a random-init one -> result tables. About 10 minutes on 2 CPU cores.
# A pipeline check, not a quality claim: a few CPU minutes of pretraining give small gains at best.
set -euo pipefail
OUT=${1:-demo_out}
VICREGL=${VICREGL:-.venv/bin/vicregl}
rm -rf "$OUT"
mkdir -p "$OUT"
SYNTH=$OUT/synth
RUN=$OUT/pretrain
PRETRAINED=$RUN/backbone.pth
EVAL="--image-size 96 --resize 96 --batch-size 64 --workers 0 --device cpu --cache-dir $OUT/cache"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "synthetic data"
"$VICREGL" synth --out "$SYNTH" --num-train 1000 --num-val 300 --image-size 96 --seed 0

step "backbone registry"
"$VICREGL" backbones

step "VICRegL pretraining (configs/pretrain/demo.yaml)"
"$VICREGL" pretrain --config configs/pretrain/demo.yaml --data "$SYNTH/classification/train" --out "$RUN"

step "k-NN (k = 20, 200): pretrained and random init"
"$VICREGL" knn --weights "$PRETRAINED" --data "$SYNTH/classification" --k 20 200 --out "$OUT/knn/pretrained" $EVAL
"$VICREGL" knn --weights random --backbone resnet18 --data "$SYNTH/classification" --k 20 200 \
    --out "$OUT/knn/random" $EVAL

step "linear probe on cached features (--cached: all learning rates at once)"
"$VICREGL" linear --cached --weights "$PRETRAINED" --data "$SYNTH/classification" --lr 1 0.1 0.01 --epochs 30 \
    --out "$OUT/linear/pretrained" $EVAL
"$VICREGL" linear --cached --weights random --backbone resnet18 --data "$SYNTH/classification" --lr 1 0.1 0.01 \
    --epochs 30 --out "$OUT/linear/random" $EVAL

step "frozen linear segmentation on mmsegmentation (synthetic VOC layout)"
for weights in pretrained random; do
    if [ "$weights" = pretrained ]; then args=(--weights "$PRETRAINED"); else args=(--weights random --backbone resnet18); fi
    "$VICREGL" segment "${args[@]}" --dataset voc --data-root "$SYNTH/VOC2012" --protocol linear --frozen \
        --lr 0.01 --iters 40 --batch-size 8 --workers 0 --out "$OUT/segment/$weights"
done

step "Faster R-CNN C4 on the embedded torchvision engine (synthetic VOC layout)"
"$VICREGL" detect --weights "$PRETRAINED" --dataset voc --data-root "$SYNTH/VOC2012" --engine torchvision --iters 20 \
    --batch-size 2 --rois-per-image 16 --proposals-test 20 --precise-bn-iters 5 --workers 0 --out "$OUT/detect"

step "results"
"$VICREGL" report "$OUT/knn" --title "k-NN (synthetic, resnet18)"
"$VICREGL" report "$OUT/linear" --title "linear --cached (synthetic, resnet18)"
"$VICREGL" report "$OUT/segment" --title "linear segmentation, frozen (synthetic VOC)"
"$VICREGL" report "$OUT/detect" --title "Faster R-CNN C4, torchvision engine (synthetic VOC)"
