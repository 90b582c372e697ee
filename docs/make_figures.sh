#!/usr/bin/env bash
# Re-creates the README's evaluation figures and numbers from the default run's checkpoint:
# the evaluation methods, the align-text study and the shapes captioning demonstration.
#   bash docs/make_figures.sh [CHECKPOINT]     (CPU, minutes)
# The MNIST study (9 minutes) and the GPU runs have their own commands in the README.
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
run fewshot --dataset shapes:shape --parts image --shots 16 --seeds 0 --wise-ft 0 0.25 0.5 0.75 1 \
    --original shapes:colour shapes:count --out "$OUT/wise_ft"
run align-text --dataset shapes:colour --words crimson=red emerald=green azure=blue amber=yellow violet=purple tangerine=orange \
    --pairs 6 24 96 --original shapes:count shapes:position --out "$OUT/align_text"
python -m clipscratch.caption train --config configs/caption_shapes.yaml clip="$CKPT" --overwrite  # it rewrites its own decoders
run caption --dataset shapes:colour --decoder runs/caption_shapes/adapter runs/caption_shapes/prefix runs/caption_shapes/lora \
    --out "$OUT/caption"
mkdir -p docs/images
cp "$OUT"/zeroshot_confusion.png "$OUT"/zeroshot_prompts.png "$OUT"/fewshot_shots.png \
   "$OUT"/tip_adapter_shots.png "$OUT"/gradcam_grid.png docs/images/
cp "$OUT"/caption/caption_examples_lora.png docs/images/caption_shapes_lora.png
cp "$OUT"/align_text/*.png docs/images/
cp "$OUT"/wise_ft/fewshot_wise_ft_image.png docs/images/wise_ft_image.png
cp runs/default/curves.png docs/images/default_curves.png
