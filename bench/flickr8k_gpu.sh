#!/usr/bin/env bash
# The real-data GPU runs of the README, in one go (one H100, about 11 minutes; the fp8 step alone 5):
#   bash bench/flickr8k_gpu.sh DATA_DIR OUT_DIR [STEPS]   (DATA_DIR: a copy of ../shared/data; STEPS: the
#                                                          steps to run, default "train fp8 caption")
# 1. Flickr8k shards (official train / test split of flickr8k-1000); 2. ViT-B/32 trained from
# scratch on the 753 train photos (configs/flickr8k.yaml), retrieval on the 125 test photos;
# 3. FP8 against bf16 on the same data (ViT-B/16, 400 steps each): loss curves;
# 4. caption decoders (adapter / prefix / LoRA) on that CLIP, scored on the test photos.
set -uo pipefail
D=${1:?data dir}; O=${2:?out dir}; STEPS=${3:-train fp8 caption}; mkdir -p "$O"
want() { [[ " $STEPS " == *" $1 "* ]]; }
PY=${PYTHON:-python3}
CAP="$D/flickr8k-1000/captions.txt"; LISTS="$D/flickr8k-captions"
$PY -m clipscratch.data.make_shards --captions "$CAP" --only "$LISTS/Flickr_8k.trainImages.txt" --split train \
    --maxcount 100 --out data/flickr8k/train 2>&1 | grep -v "img/s" | tail -2
$PY -m clipscratch.data.make_shards --captions "$CAP" --only "$LISTS/Flickr_8k.testImages.txt" --split test \
    --out data/flickr8k/test 2>&1 | grep -v "img/s" | tail -2
if want train; then
echo "== ViT-B/32 on Flickr8k"
time $PY train.py --config configs/flickr8k.yaml 2>&1 | grep -vE "it/s|s/it|Warning|warn" | tail -22
cp -r runs/flickr8k/curves.png "$O/flickr8k_curves.png"; cp runs/flickr8k/metrics.jsonl "$O/flickr8k_metrics.jsonl"
$PY evaluate.py retrieval --model runs/flickr8k --dataset 'wds:data/flickr8k/test/shard-000000.tar' --out "$O/retrieval" 2>&1 | grep -E "R@|scoring"
fi
if want fp8; then
echo "== FP8 vs bf16, ViT-B/16, 400 steps on the Flickr8k train photos"
for mode in bf16 fp8; do
  $PY train.py --config configs/flickr8k.yaml model=ViT-B-16 max_steps=400 epochs=70 evals={} eval_every=0 data.batch_size=128 log_every=5 \
      fp8=$([ $mode = fp8 ] && echo true || echo false) output_dir=runs/fp8_$mode 2>&1 | grep -vE "it/s|s/it|Warning|warn" | tail -2
  cp runs/fp8_$mode/metrics.jsonl "$O/fp8_${mode}_metrics.jsonl"
done
$PY bench/compare_curves.py runs/fp8_bf16/metrics.jsonl runs/fp8_fp8/metrics.jsonl --labels bf16 fp8 --out "$O/fp8_vs_bf16.png"
fi
if want caption; then
echo "== captioning"
time $PY -m clipscratch.caption train --config configs/caption_flickr8k.yaml lm.captions="$LISTS/Flickr8k.token.txt" \
    "lm.exclude=[$LISTS/Flickr_8k.testImages.txt]" 2>&1 | grep -vE "it/s|s/it|Warning|warn" | tail -6
$PY evaluate.py caption --model runs/flickr8k --beams 3 --out "$O/caption" \
    --dataset 'wds:data/flickr8k/train/shard-{000000..000007}.tar::data/flickr8k/test/shard-000000.tar' \
    --decoder runs/caption_flickr8k/adapter runs/caption_flickr8k/prefix runs/caption_flickr8k/lora 2>&1 | grep -vE "it/s|s/it|Warning|warn"
fi
