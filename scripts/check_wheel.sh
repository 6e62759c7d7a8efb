#!/usr/bin/env bash
# The wheel as a user gets it: build it from a copy of this checkout, install it (not editable) into a fresh
# venv whose dependencies come from the test venv (a .pth file: offline, seconds), then from a folder outside
# the checkout run `vicregl presets`, a pretraining dry run of a packaged preset and a segmentation export.
# Usage: bash scripts/check_wheel.sh [WORK_DIR]  (default: a new temporary folder; PYTHON picks the test venv)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)

echo "== building the wheel (copy of the checkout; nothing is written into it)"
mkdir -p "$WORK/src" "$WORK/dist" "$WORK/run"
tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude=./demo_out --exclude=./build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache -cf - . | tar -C "$WORK/src" -xf -
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$WORK/dist" "$WORK/src"
WHEEL=$(ls "$WORK"/dist/vicregl-*.whl)
echo "   $(basename "$WHEEL")"

echo "== installing it into a fresh venv (dependencies from $("$PY" -c 'import sys; print(sys.prefix)'))"
"$PY" -m venv --without-pip "$WORK/venv"
SITE=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
"$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))' > "$SITE/test_venv_packages.pth"
"$WORK/venv/bin/python" -m pip install --quiet --no-deps --no-index "$WHEEL"

cd "$WORK/run"  # outside the checkout: only the installed package can be found
VICREGL="$WORK/venv/bin/vicregl"
INSTALLED=$("$WORK/venv/bin/python" -c 'import vicregl_cli; print(vicregl_cli.__file__)')
case "$INSTALLED" in
    "$WORK/venv/"*) echo "   vicregl_cli imported from $INSTALLED" ;;
    *) echo "vicregl_cli imported from $INSTALLED, not from the wheel" >&2; exit 1 ;;
esac

echo "== vicregl presets"
"$VICREGL" presets
echo "== vicregl synth (tiny)"
"$VICREGL" synth --out synth --num-train 24 --num-val 12 --image-size 48 --workers 1
echo "== vicregl pretrain --config resnet50_alpha0.75 --dry-run"
"$VICREGL" pretrain --config resnet50_alpha0.75 --data synth/classification/train --out pretrain --dry-run \
    --device cpu batch_size=8 num_workers=0 mlp=512-512-512  # the preset, a lighter expander for CI
echo "== vicregl segment --export-only"
"$VICREGL" segment --dataset voc --data synth/VOC2012 --protocol linear --frozen --lr 0.1 \
    --weights random --backbone resnet18 --out segment --export-only --device cpu
CONFIG=$(ls segment/*/config.py | head -n 1)
grep -q "data_root" "$CONFIG"
echo "wheel check passed: $(basename "$WHEEL") installed, run from $WORK/run, wrote $CONFIG"
