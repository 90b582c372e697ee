#!/usr/bin/env bash
# Re-creates the README's evaluation figures and numbers from the default run's checkpoint.
#   bash docs/make_figures.sh [CHECKPOINT]     (CPU, a few minutes)
set -euo pipefail
CKPT=${1:-$(ls -d runs/default/checkpoints/step_* | tail -1)}
OUT=eval_results/readme
run() { m=$1; shift; python evaluate.py "$m" --model "$CKPT" --out "$OUT" "$@"; }
run zeroshot --dataset shapes:position
run zeroshot --dataset shapes:colour --compare "a photo of {} shapes" "This is not a photo of {}" "No {}, no score."
run retrieval --dataset shapes:colour
run linear-probe --dataset shapes:shape
run fewshot --dataset shapes:shape --parts text_projection image_projection text image --shots 1 2 4 8 16 --seeds 0 1 --epochs 20
run tip-adapter --dataset shapes:shape --shots 1 2 4 8 16 --seeds 0 1
run zeroshot --dataset shapes-unseen:shape --out "$OUT/unseen"
run gradcam --dataset shapes:colour --images 4 --pointing 300
run clipscore --dataset shapes:colour --show 3
run binary --dataset shapes:plural --labels "one shape" "several shapes" --template "a photo of {label}" --shots 4 16 64 --seeds 0 1
mkdir -p docs/images
cp "$OUT"/zeroshot_confusion.png "$OUT"/zeroshot_prompts.png "$OUT"/fewshot_shots.png \
   "$OUT"/tip_adapter_shots.png "$OUT"/gradcam_grid.png docs/images/
cp runs/default/curves.png docs/images/default_curves.png
