#!/usr/bin/env bash
# Issue 12's GPU measurements in parts of under 10 minutes each (one H100 per part):
#   bash bench/gpu_issue12.sh 1 DATA_DIR OUT_DIR   # ViT-B/32 b512: Flickr8k and Hateful Memes lengths, eager and compiled
#   bash bench/gpu_issue12.sh 2 DATA_DIR OUT_DIR   # ViT-B/16 b256 (bf16 / FP8, compiled) and ViT-L/14 b128 (eager)
#   bash bench/gpu_issue12.sh 3 DATA_DIR OUT_DIR   # largest batch with real lengths; data-fed from real JPEG shards
# After text packing moved to the host (models/packing.py: compiled once, flash attention's varlen kernel):
#   bash bench/gpu_issue12.sh 4 DATA_DIR OUT_DIR   # GPU correctness checks; ViT-B/32 b512 compiled, Flickr8k lengths
#   bash bench/gpu_issue12.sh 5 DATA_DIR OUT_DIR   # ViT-B/32 b512 compiled, Hateful Memes lengths; where the step's time goes
#   bash bench/gpu_issue12.sh 6 DATA_DIR OUT_DIR   # ViT-B/16 b256 compiled, Flickr8k lengths: bf16 and FP8
#   bash bench/gpu_issue12.sh 7 DATA_DIR OUT_DIR   # data-fed from 256-px shards and from the Flickr8k photos as they are
#   bash bench/gpu_issue12.sh 8 DATA_DIR OUT_DIR   # attention kernels at CLIP's shapes; ViT-B/32 with the patch embedding as a matmul
#   bash bench/gpu_issue12.sh 9 DATA_DIR OUT_DIR   # ViT-B/32 b512 both caption files; data-fed 256 px (packed text pinned)
#   bash bench/gpu_issue12.sh 10 DATA_DIR OUT_DIR  # ViT-B/32 both caption files again, 48 steps, with the host's time per step
#   bash bench/gpu_issue12.sh 11 DATA_DIR OUT_DIR  # data-fed again after the GPU crop path stopped waiting on the GPU
#   bash bench/gpu_issue12.sh 12 DATA_DIR OUT_DIR  # nvImageCodec data-fed with the CUDA array interface again (DLPack reverted;
#                                                   its recorded run used 130 s / 100 s time limits)
#   bash bench/gpu_issue12.sh 13 DATA_DIR OUT_DIR  # data-fed 256 px at the interpreter's 5 ms and 0.2 ms thread switch
#                                                   interval, with the GPU's busy time; largest batch with MLP recompute
# Part 14 (data-fed with 1, 2 and 4 prefetch threads, and the feeding alone) ran at commit 927653a; the prefetch
# threads were removed after it (no gain), so it runs only there.
#   bash bench/gpu_issue12.sh 15 DATA_DIR OUT_DIR  # ViT-B/32 b512 speed with MLP recompute
#   bash bench/gpu_issue12.sh 16 DATA_DIR OUT_DIR  # data-fed 256 px with the GPU's busy time and the CUDA calls of each
#                                                   thread; then part 15
#   bash bench/gpu_issue12.sh 17 DATA_DIR OUT_DIR  # data-fed with the prefetch stream at the training's priority and ahead of it
#   bash bench/gpu_issue12.sh 18 DATA_DIR OUT_DIR  # nvImageCodec buffer reuse check (final code); data-fed 256 px with 14 and
#                                                   6 workers, and the feeding alone
#   PREV_TREE=DIR bash bench/gpu_issue12.sh 19 DATA_DIR OUT_DIR  # data-fed 256 px with the package of DIR (commit
#                  e98ccf5's clipscratch/ beside this bench/: tarfile, torchvision's crop draw), then this one, then this
#                  one (also the feeding beside a fixed batch, and fed batches in turn), with 6 workers and with one
#                  intra-op thread; the Flickr8k photos; the host's CPU use in each
#   bash bench/gpu_issue12.sh 20 DATA_DIR OUT_DIR  # ViT-B/16 b256 compiled: where the step's GPU time goes (ours and
#                                                   open_clip's); attention kernels with FlexAttention
#   bash bench/gpu_issue12.sh 21 DATA_DIR OUT_DIR  # data-fed 256 px twice each with torch's intra-op threads and with one;
#                                                   then with Inductor's C++ wrapper launching the step's kernels
#   bash bench/gpu_issue12.sh 22 DATA_DIR OUT_DIR  # data-fed 256 px: the feeding beside a fixed batch and 8 fed batches in
#                                                   turn, with the step as compiled by default and under CUDA graphs
#   bash bench/gpu_issue12.sh 23 DATA_DIR OUT_DIR  # data-fed 256 px, training on the default CUDA stream and on a stream
#                                                   of its own, twice each
#   bash bench/gpu_issue12.sh 24 DATA_DIR OUT_DIR  # data-fed 256 px: the prefetch thread's time a batch and the training's
#                                                   wait for it, compiled by default and under CUDA graphs
#   bash bench/gpu_issue12.sh 25 DATA_DIR OUT_DIR  # as part 24 under CUDA graphs, the prefetch stream at the training's
#                                                   priority and ahead of it
#   bash bench/gpu_issue12.sh 26 DATA_DIR OUT_DIR  # under CUDA graphs, the feeding beside a fixed batch profiled: GPU busy
#                                                   time and the CUDA calls of each thread
#   bash bench/gpu_issue12.sh 27 DATA_DIR OUT_DIR  # the CUDA calls of one batch's decode and GPU transform, both decoders
#   bash bench/gpu_issue12.sh 28 DATA_DIR OUT_DIR  # data-fed 256 px with the decode in a thread and in a process of its own
#                                                   (CUDA IPC), compiled by default; beside a fixed batch under CUDA graphs
#   bash bench/gpu_issue12.sh 29 DATA_DIR OUT_DIR  # ViT-B/16 b256 Flickr8k lengths, compiled by default and max-autotune
#   bash bench/gpu_issue12.sh 30 DATA_DIR OUT_DIR  # ViT-L/14 b128 Flickr8k lengths compiled: bf16 and FP8
#   PREV_TREE=DIR bash bench/gpu_issue12.sh 31 DATA_DIR OUT_DIR  # train.py itself fed from 256-px shards (ViT-B/32
#                  b512, compile, data.gpu_decode, 100 steps), with DIR's train.py and package (the loss read every
#                  step), then with this one's (read on logged steps only); REVERSE=1: this one's first
#   bash bench/gpu_issue12.sh 32 DATA_DIR OUT_DIR  # train.py fed from the 1,000 Flickr8k photos as they are, decoded on
#                                                   the GPU, by the CPU workers (the default), on the GPU again
#   bash bench/gpu_issue12.sh 33 DATA_DIR OUT_DIR  # the same on the 256-px shapes shards
#   bash bench/gpu_issue12.sh 34 DATA_DIR OUT_DIR  # data_fed.py with train.py's own step: a fixed batch, the CPU
#                                                   workers, the GPU decode
#   bash bench/gpu_issue12.sh 35 DATA_DIR OUT_DIR  # train.py on the 256-px shards for 250 steps, CPU workers and GPU
#                                                   decode: the later windows come after the batches the data workers
#                                                   buffer while the model compiles (4 a worker)
#   PREV_TREE=DIR bash bench/gpu_issue12.sh 36 DATA_DIR OUT_DIR  # train.py on the 256-px shards for 250 steps with
#                  the CPU workers: this tree, DIR's (commit bf7c757: the crop before the channels-last view), this
#                  tree again
#   bash bench/gpu_issue12.sh 37 DATA_DIR OUT_DIR  # data_fed.py with train.py's step, a fixed batch and the CPU
#                                                   workers; train.py on the Flickr8k photos for 250 steps, CPU workers
#   bash bench/gpu_issue12.sh 38 DATA_DIR OUT_DIR  # as part 37's first row, with the feeding beside a fixed batch and
#                                                   fed batches in turn; with 14 and with 8 workers
#   bash bench/gpu_issue12.sh 39 DATA_DIR OUT_DIR  # CUDA graphs (train.py's cuda_graphs=true): packed text filled for
#                                                   them checked on the GPU; train.py's step fixed and fed by the CPU
#                                                   workers under them; train.py itself for 250 steps, CPU workers
#   bash bench/gpu_issue12.sh 40 DATA_DIR OUT_DIR  # train.py with cuda_graphs=true and the CPU workers: 600 steps on
#                                                   the 256-px shards, 300 on the Flickr8k photos as they are
#   bash bench/gpu_issue12.sh 41 DATA_DIR OUT_DIR  # the 14 CPU workers' production rate alone over 200 batches;
#                                                   train.py, cuda_graphs=true, 600 steps, T fixed at the context,
#                                                   with the loop's wait for data (data_wait_s) in its log
#   PREV_TREE=DIR bash bench/gpu_issue12.sh 42 DATA_DIR OUT_DIR  # the CPU workers with JPEGs decoded by simplejpeg
#                  and crops resized into their batch rows, against DIR's (commit db2a5e1: PIL, stacked): decode
#                  rates, one worker's cost a sample, 14 workers' production rate (this tree, DIR's, this tree)
#   bash bench/gpu_issue12.sh 46 DATA_DIR OUT_DIR  # FP8's ceiling on ViT-B/16's image tower: its products in bf16 and
#                                                   FP8 alone, one block compiled under four recipes; where the rest of
#                                                   our ViT-B/16 step's GPU time goes (40 kernels)
#   bash bench/gpu_issue12.sh 47 DATA_DIR OUT_DIR  # fp8_ceiling.py again, its block recipes mended (initialised
#                                                   weights; the input gradient's FP8 weight laid out as _scaled_mm needs)
#   bash bench/gpu_issue12.sh 48 DATA_DIR OUT_DIR  # the packed captions' attention kernels with their GPU time; ViT-B/32
#                                                   b512 Flickr8k lengths with the captions attended by flash's varlen
#                                                   kernel and by the written-out attention (attn=math)
#   bash bench/gpu_issue12.sh 49 DATA_DIR OUT_DIR  # packed text with SDPA's memory-efficient kernel (attn=efficient)
#                                                   checked against padded text; ViT-B/32 b512 with it, both caption files
#   bash bench/gpu_issue12.sh 50 DATA_DIR OUT_DIR  # ViT-B/16 b256, Flickr8k lengths: varlen compiled by default and under
#                                                   CUDA graphs, attn=efficient
#   bash bench/gpu_issue12.sh 51 DATA_DIR OUT_DIR  # ViT-B/32 b512 Flickr8k lengths compiled by default and under CUDA
#                                                   graphs (@reduce-overhead, packing filled), varlen and attn=efficient
#   bash bench/gpu_issue12.sh 52 DATA_DIR OUT_DIR  # the same with the Hateful Memes lengths
#   bash bench/gpu_issue12.sh 53 DATA_DIR OUT_DIR  # packed text by both kernels checked against padded text; ViT-B/32
#                                                   b512 Flickr8k lengths, the packing's new default (attended by SDPA's
#                                                   memory-efficient kernel) against flash's varlen kernel
#   bash bench/gpu_issue12.sh 54 DATA_DIR OUT_DIR  # part 45 again with the padded layout's memory-efficient kernel
#                                                   (the new default): ViT-B/16 open_clip on Flickr8k lengths, ours on
#                                                   three-token captions
#   bash bench/gpu_issue12.sh 43 DATA_DIR OUT_DIR  # train.py with the CPU workers, cuda_graphs=true for 600 steps
#                                                   and compiled by default for 300 (data waits, GPU peak memory)
#   bash bench/gpu_issue12.sh 45 DATA_DIR OUT_DIR  # ViT-B/16 b256 compiled: open_clip and packed clipscratch on
#                                                   Flickr8k lengths, then packed clipscratch on one-word captions
#                                                   (3 tokens: the step with next to no text, the bound on the ratio)
#   bash bench/gpu_issue12.sh 44 DATA_DIR OUT_DIR  # part 39's data_fed.py rows again (train.py's step under CUDA
#                                                   graphs, a fixed batch and fed); train.py under CUDA graphs on the
#                                                   Flickr8k photos as they are
#   bash bench/gpu_issue12.sh 55 DATA_DIR OUT_DIR  # the image tower's attention kernels as the model lays out q/k/v
#                                                   (GPU kernel time); ViT-B/32 b512 Memes lengths under CUDA graphs with
#                                                   cudagraph trees' log and the host's time of each call
#   bash bench/gpu_issue12.sh 56 DATA_DIR OUT_DIR  # ViT-B/32 b512 Memes lengths under CUDA graphs, every batch shape
#                                                   recorded before the timed steps; the image tower's attention by SDPA's
#                                                   pick and by its memory-efficient kernel
#   bash bench/gpu_issue12.sh 57 DATA_DIR OUT_DIR  # the same with Flickr8k lengths
#   bash bench/gpu_issue12.sh 58 DATA_DIR OUT_DIR  # the image tower's attention over T = 50 ... 257: SDPA's pick, cuDNN,
#                                                   memory-efficient, flash; the rows of part 55 again, each compiled afresh
#   bash bench/gpu_issue12.sh 59 DATA_DIR OUT_DIR  # attention by the memory-efficient kernel first up to 64 tokens (the
#                                                   new default) checked against SDPA's pick; ViT-B/32 b512 Flickr8k
#                                                   lengths with each, compiled by default and under CUDA graphs
#   bash bench/gpu_issue12.sh 60 DATA_DIR OUT_DIR  # part 59's check for three inits and batches
#   bash bench/gpu_issue12.sh 61 DATA_DIR OUT_DIR  # part 58's sweep with the forward alone (as in evaluation) beside
#                                                   forward + backward
#   bash bench/gpu_issue12.sh 62 DATA_DIR OUT_DIR  # the final code: ViT-B/32 b512 Memes lengths compiled by default and
#                                                   under CUDA graphs
#   bash bench/gpu_issue12.sh 63 DATA_DIR OUT_DIR  # the final code: ViT-B/16 b256 Flickr8k lengths
# The MLP's one-pass backward is on in compiled rows (as train.py with compile=true) and off with :unfused; parts
# 72-78 ran while it was off unless named (:fused): the variant lists below are today's names for what each ran.
#   bash bench/gpu_issue12.sh 64 DATA_DIR OUT_DIR  # the MLP's bias gradient in the pass of its hidden gradient
#                                                   (models/bias_activation.py): the kernel alone and its GPU check
#   bash bench/gpu_issue12.sh 65 DATA_DIR OUT_DIR  # ViT-B/16 b256 Flickr8k lengths with it (:fused) and without
#   bash bench/gpu_issue12.sh 66 DATA_DIR OUT_DIR  # ViT-B/32 b512 Flickr8k lengths with it and without
# Parts 67, 69 and 70 measured attention's q/k/v projection with a one-pass backward (models/qkv_projection.py, removed
# after them, back in another form since part 81; part 70 ran its form of commit 9959093, parts 67 and 69 uncommitted
# earlier forms of it: q/k/v as views of one product and three kernel launches, then three products). Part 68 never
# ran.
#   bash bench/gpu_issue12.sh 71 DATA_DIR OUT_DIR  # the final code: part 64's GPU check; ViT-B/16 b256 Flickr8k lengths
#                                                   with the MLP's one-pass backward and without
#   bash bench/gpu_issue12.sh 72 DATA_DIR OUT_DIR  # the compiled fp32 ViT-B/32 step against eager: packed, padded, static,
#                                                   with the one-pass backward; the towers and packed attention alone
#   bash bench/gpu_issue12.sh 73 DATA_DIR OUT_DIR  # the one-pass backward under torch.compile: the operator, one MLP,
#                                                   Inductor's code (bench/bias_activation_compiled.py)
#   bash bench/gpu_issue12.sh 74 DATA_DIR OUT_DIR  # parts 73 and 72 after the fix (no no-op .to() in its forward)
#   bash bench/gpu_issue12.sh 75 DATA_DIR OUT_DIR  # ViT-B/16 b256 without and with it, ABBA
#   bash bench/gpu_issue12.sh 76 DATA_DIR OUT_DIR  # ViT-B/32 b512 compiled ABBA; eager with and without (B/32, B/16)
#   bash bench/gpu_issue12.sh 77 DATA_DIR OUT_DIR  # part 72's check, also replayed as CUDA graphs
#   bash bench/gpu_issue12.sh 78 DATA_DIR OUT_DIR  # ViT-B/32 b512 under CUDA graphs without and with it, ABBA
#   bash bench/gpu_issue12.sh 79 DATA_DIR OUT_DIR  # train.py on the Flickr8k train photos, compile=true, 300 steps with
#                                                   and without it (fused_activation): loss curves
#   bash bench/gpu_issue12.sh 80 DATA_DIR OUT_DIR  # the compiled fp32 step with FP8 linears against eager FP8, with and
#                                                   without the one-pass MLP backward
# Parts 81-84: the q/k/v projection's one-pass backward again (models/qkv_projection.py: q/k/v as views of one
# product, one launch), on in every clipscratch row since (:noqkv turns it off); the runs named their eager rows
# without it `packed@eager` and with it `packed:qkv@eager`
#   bash bench/gpu_issue12.sh 81 DATA_DIR OUT_DIR  # GPU checks: both one-pass kernels eager and compiled against
#                                                   autograd; the compiled fp32 step against eager
#   bash bench/gpu_issue12.sh 82 DATA_DIR OUT_DIR  # ViT-B/16 b256 Flickr8k lengths: open_clip, with it and without
#   bash bench/gpu_issue12.sh 83 DATA_DIR OUT_DIR  # ViT-B/16 b256 without and with it, ABBA; eager without and with it
#   bash bench/gpu_issue12.sh 84 DATA_DIR OUT_DIR  # ViT-B/32 b512: open_clip, compiled without and with it, eager
#                                                   without and with it
# Part 85 is part 81's command again, after the backward stopped computing a frozen weight's product (commit e9ce1a6).
#   bash bench/gpu_issue12.sh 86 DATA_DIR OUT_DIR  # train.py on the Flickr8k train photos, eager, 300 steps with it
#                                                   (fused_qkv) and twice without: loss curves, and the repeat's drift
#   bash bench/gpu_issue12.sh 87 DATA_DIR OUT_DIR  # part 54 with both one-pass kernels: ViT-B/16 b256 open_clip and ours
#                                                   on Flickr8k lengths, ours on three-token captions (the bound)
#   bash bench/gpu_issue12.sh 88 DATA_DIR OUT_DIR  # ViT-B/16 b256 Flickr8k lengths: the whole step compiled, each tower
#                                                   compiled alone, and the text tower on a side CUDA stream
#   bash bench/gpu_issue12.sh 89 DATA_DIR OUT_DIR  # the same, the whole step compiled against the text on a side stream, ABBA
#   bash bench/gpu_issue12.sh 90 DATA_DIR OUT_DIR  # gpu_checks "text stream": the model's own side stream (text_stream)
#                                                   against one stream, fp32/bf16, eager and towers compiled apart
#   bash bench/gpu_issue12.sh 91 DATA_DIR OUT_DIR  # ViT-B/16 b256 Flickr8k lengths: open_clip, the whole step compiled,
#                                                   the text stream at normal and at high priority
#   bash bench/gpu_issue12.sh 92 DATA_DIR OUT_DIR  # part 91's rows of ours in reverse order (ABBA), then eager with and without
#   bash bench/gpu_issue12.sh 93 DATA_DIR OUT_DIR  # the same on ViT-B/32 b512
#   bash bench/gpu_issue12.sh 94 DATA_DIR OUT_DIR  # train.py compiled on the Flickr8k photos, text_stream=true and false
#   bash bench/gpu_issue12.sh 95 DATA_DIR OUT_DIR  # two GPUs (DDP): train.py's default run eager with text_stream=false
#                                                   twice and true, weights compared; then compiled with it
#   bash bench/gpu_issue12.sh 96 DATA_DIR OUT_DIR  # part 95 was refused (no 2-GPU machine lent): two DDP processes (gloo)
#                                                   sharing the one GPU, text_stream on and off, weights compared
# Parts 97-99 (bench/fused_mlp.py: the MLP's activation in its products' epilogues, models/fused_mlp.py's Triton
# kernels against cuBLAS with the separate passes) ran at commit a246674 as `bash bench/gpu_issue12.sh 97|98|99 ...`;
# the kernels were removed after them (slower at the image towers' shapes), so those parts run only there.
#   bash bench/gpu_issue12.sh 100 DATA_DIR OUT_DIR  # ViT-B/16 b256 Flickr8k lengths, the default compiled step and
#                                                    text_stream's: GPU time by kernel, with calls a step
#   bash bench/gpu_issue12.sh 101 DATA_DIR OUT_DIR  # ViT-B/16 b256 Flickr8k lengths: open_clip, the default compiled step,
#                                                    the same with Inductor's coordinate-descent tuning (:tuned)
#   bash bench/gpu_issue12.sh 102 DATA_DIR OUT_DIR  # the same with text_stream, tuned and not, then tuned alone again (not
#                                                    run: part 101's tuning found nothing)
#   bash bench/gpu_issue12.sh 103 DATA_DIR OUT_DIR  # text_stream under DDP: two gloo processes sharing the GPU and one
#                                                    NCCL process, each with the probe of where the all-reduces start
#   bash bench/gpu_issue12.sh 104 DATA_DIR OUT_DIR  # fp8_ceiling.py's block with FP8 casts Inductor can fuse into their
#                                                    producers (delayed per-tensor scaling) against bf16 and per-row FP8
#   bash bench/gpu_issue12.sh 105 DATA_DIR OUT_DIR  # the same with the maxima taken by rows (fusable into the producers)
#   bash bench/gpu_issue12.sh 106 DATA_DIR OUT_DIR  # ViT-B/16 b256 Flickr8k lengths: open_clip, the default compiled step,
#                                                    the same with Inductor's combo kernels (:combo)
#   bash bench/gpu_issue12.sh 107 DATA_DIR OUT_DIR  # fp8_ceiling.py's block with train.py's one-pass backward kernels:
#                                                    bf16, FP8 (delayed) for the MLP's first projection, for both
# Parts 108-112 ran at commit 736840f with the benchmark's own copy of the FP8 recipe that train.py's fp8_delayed
# now is (bench/fp8_ceiling.py's "fp8 own kernels" recipes and bench/train_step.py's :fp8own then; the model's recipe
# now, bias_activation's kernel at 16 rows and 8 warps, part 111's fastest): 108 and 109 fp8_ceiling.py's block, bf16 against FP8 for fc1 cast by
# Inductor and FP8 for fc1 (and q/k/v) with the one-pass kernels writing the copy (109 after the kernels multiplied by
# the scale's inverse); 110 the same with bias_activation's kernel stepping 16 rows; 111 the kernels alone in several
# launch configurations, and ViT-B/16 b256 open_clip, the default step and :fp8own; 112 the same with text_stream.
# At this commit part 108's command runs the model's recipe:
#   bash bench/gpu_issue12.sh 108 DATA_DIR OUT_DIR
#   bash bench/gpu_issue12.sh 113 DATA_DIR OUT_DIR  # train.py's fp8_delayed=true (the recipe in the model): ViT-B/16 on
#                                                    the Flickr8k train photos, compiled, 300 steps with it and without
#                                                    (loss curves); then ViT-B/16 b256 open_clip against it with the
#                                                    text stream (bench/train_step.py :streams:fp8delayed)
#   bash bench/gpu_issue12.sh 114 DATA_DIR OUT_DIR  # part 113's fp8_delayed=true run again (it had failed: cuBLAS refused a
#                                                    scale at an offset into a two-element buffer), its curve against part
#                                                    113's bf16 run (DATA_DIR/p113/fp8_delayed_false_metrics.jsonl), then
#                                                    part 113's step benchmark
# DATA_DIR is a copy of ../shared/data (flickr8k-1000, flickr8k-captions, hateful-memes-text).
set -uo pipefail
PART=${1:?part}; D=${2:?data dir}; O=${3:?out dir}; mkdir -p "$O"
PY=${PYTHON:-python3}
FLICKR="$D/flickr8k-captions/Flickr8k.token.txt"; MEMES="$D/hateful-memes-text/train.jsonl"
quiet() { grep --line-buffered -vE "^W[0-9]{4}|Online softmax|split the reduction|important use case|softmax\.$|^$"; }
# the 1,000 shared Flickr8k photos as they are, in 8 shards under /tmp/flickr_shards
flickr_shards() {
  $PY -m clipscratch.data.make_shards --captions "$D/flickr8k-1000/captions.txt" --out /tmp/flickr_shards \
      --maxcount 125 2>&1 | tail -1
}
# the Flickr8k train and test photos as they are, in configs/flickr8k.yaml's shards under data/flickr8k
flickr_train_shards() {
  for split in train test; do
    $PY -m clipscratch.data.make_shards --captions "$D/flickr8k-1000/captions.txt" --split $split --maxcount 100 \
        --only "$D/flickr8k-captions/Flickr_8k.${split}Images.txt" --out data/flickr8k/$split 2>&1 | grep -v "img/s" | tail -1
  done
}
# train.py on the Flickr8k train photos (configs/flickr8k.yaml, batch 128, no evaluations) once per run: $1 time limit,
# $2 lines of its output kept, $3 steps, $4 the option the runs set, $5 overrides before it, then the runs, named
# PREFIX_VALUE or PREFIX_VALUE_again (the option's value); each run's metrics.jsonl to $O/RUN_metrics.jsonl
flickr_runs() {
  local limit=$1 keep=$2 steps=$3 option=$4 before=$5 run value; shift 5
  flickr_train_shards
  for run in "$@"; do
    value=${run%_again}; value=${value##*_}
    timeout "$limit" $PY train.py --config configs/flickr8k.yaml $before $option=$value max_steps=$steps epochs=70 \
        evals={} eval_every=0 data.batch_size=128 log_every=5 output_dir=runs/$run 2>&1 \
        | grep -vE "it/s|s/it|Warning|warn" | tail -$keep
    cp runs/$run/metrics.jsonl "$O/${run}_metrics.jsonl"
  done
}
# ViT-B/16 b256 on Flickr8k lengths (the variants from $3 on, time limit $1), then packed clipscratch on three-token
# captions (limit $2): the step with next to no text, what bounds the ratio to open_clip
text_bound() {
  timeout "$1" $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 --json "$O/b16_flickr.json" \
      --variants "${@:3}" 2>&1 | quiet
  $PY -c "open('/tmp/one_word.token.txt', 'w').write(''.join(f'photo{i}.jpg#0\ta\n' for i in range(2000)))"
  timeout "$2" $PY bench/train_step.py --captions /tmp/one_word.token.txt --models ViT-B-16 --warmup-rounds 1 \
      --json "$O/b16_one_word.json" --variants clipscratch:packed 2>&1 | quiet
}
# data-fed from the 256-px shapes shards, then from the Flickr8k photos as they are: $1 and $2 are the variants
data_fed() {
  timeout 200 $PY bench/data_fed.py --samples 30000 --workers 14 --variants $1 \
      --json "$O/data_fed_256.json" 2>&1 | quiet | grep -v "img/s"
  flickr_shards
  timeout 150 $PY bench/data_fed.py --pattern '/tmp/flickr_shards/shard-{000000..000007}.tar' --workers 14 \
      --variants $2 --json "$O/data_fed_flickr.json" 2>&1 | quiet
}
# the 30,000 256-px shapes JPEGs data_fed.py writes (as fed256 reads them), for train.py: their pattern in $SHAPES
SHAPES='/tmp/bench_shards/part{000..011}-000000.tar'
shapes_shards() {
  $PY -c "import sys; sys.path.insert(0, 'bench'); from data_fed import make_data; print(make_data('/tmp/bench_shards', 30000, 16))"
}
# train.py itself, ViT-B/32 b512 compiled, 100 steps: $1 the tree whose train.py runs, $2 its output directory,
# $3 the shards, then train.py overrides (data.gpu_decode=true by default here); prints its logged samples/s
trainer() {
  (cd "$1" && timeout 260 $PY train.py --config configs/cc3m_vit_b32.yaml "data.train=$3" data.val= "evals={}" \
      eval_every=0 data.batch_size=512 data.workers=14 data.samples_per_epoch=100000000 data.gpu_decode=true \
      compile=true max_steps=100 log_every=20 save_every=1000000 "output_dir=$2" "${@:4}" 2>&1 \
      | grep --line-buffered -vE "it/s|s/it|Warning|warn" | tail -3)
  $PY -c "import json, sys; [print('step', r['step'], 'samples/s', round(r['samples_per_s']), 'data wait s', r.get('data_wait_s'),
    'GPU peak GiB', r.get('gpu_peak_gib'))
    for r in map(json.loads, open(sys.argv[1])) if 'loss' in r]" "$2/metrics.jsonl"; cp "$2/metrics.jsonl" "$O/$(basename "$2")_metrics.jsonl"
}
# train.py fed by the GPU decode, by the CPU workers (the default), by the GPU decode again (the first runs cold):
# $1 the output directories' prefix, $2 the shards
decoders() {
  trainer "$PWD" "$1_gpu_decode" "$2"; trainer "$PWD" "$1_cpu_workers" "$2" data.gpu_decode=false
  trainer "$PWD" "$1_gpu_decode_again" "$2"
}
# bench/gpu_checks.py on the Flickr8k captions and photos: $1 the time limit, the rest its options (--only NAMES)
checks() { timeout "$1" $PY bench/gpu_checks.py --captions "$FLICKR" --photos "$D/flickr8k-1000/images" "${@:2}" 2>&1 | quiet; }
# data-fed from the 256-px shapes shards: $1 the time limit, the rest data_fed.py's options (a later --workers wins)
fed256() { timeout "$1" $PY bench/data_fed.py --samples 30000 --workers 14 "${@:2}" 2>&1 | quiet | grep -v "img/s"; }
case $PART in
114)
  flickr_runs 170 3 300 fp8_delayed "compile=true model=ViT-B-16" fp8_delayed_true
  $PY bench/compare_curves.py "$D/p113/fp8_delayed_false_metrics.jsonl" runs/fp8_delayed_true/metrics.jsonl \
      --labels "bf16 (part 113)" "fp8_delayed=true" --out "$O/fp8_delayed_vs_bf16.png"
  timeout 250 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 --iters 48 \
      --json "$O/b16_flickr_fp8delayed.json" --variants open_clip clipscratch:packed:streams:fp8delayed 2>&1 | quiet ;;
113)
  flickr_runs 160 3 300 fp8_delayed "compile=true model=ViT-B-16" fp8_delayed_false fp8_delayed_true
  $PY bench/compare_curves.py runs/fp8_delayed_false/metrics.jsonl runs/fp8_delayed_true/metrics.jsonl \
      --labels "bf16" "fp8_delayed=true" --out "$O/fp8_delayed_vs_bf16.png"
  timeout 230 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 --iters 48 \
      --json "$O/b16_flickr_fp8delayed.json" --variants open_clip clipscratch:packed:streams:fp8delayed 2>&1 | quiet ;;
108)
  timeout 400 $PY bench/fp8_ceiling.py --skip-products --fused --profile 40 --json "$O/fp8_own_kernels.json" \
      --recipes bf16 "fp8 delayed fast-accum fc1" "fp8 own kernels fc1" "fp8 own kernels fc1+qkv" 2>&1 | quiet \
      | grep -v top_kernels ;;
107)
  timeout 400 $PY bench/fp8_ceiling.py --skip-products --fused --profile 40 --json "$O/fp8_delayed_fused.json" \
      --recipes bf16 "fp8 delayed fast-accum fc1" "fp8 delayed fast-accum mlp" 2>&1 | quiet | grep -v top_kernels ;;
106)
  timeout 590 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 --iters 48 \
      --json "$O/b16_flickr_combo.json" --variants open_clip clipscratch:packed clipscratch:packed:combo 2>&1 | quiet ;;
105)
  timeout 500 $PY bench/fp8_ceiling.py --skip-products --profile 40 --json "$O/fp8_delayed_rows.json" --recipes bf16 \
      "fp8 delayed fast-accum" "fp8 delayed fast-accum row-amax" "fp8 delayed all three row-amax" 2>&1 | quiet ;;
104)
  timeout 500 $PY bench/fp8_ceiling.py --skip-products --profile 30 --json "$O/fp8_delayed.json" --recipes bf16 "fp8 rowwise" \
      "fp8 delayed" "fp8 delayed fast-accum" "fp8 delayed all three" 2>&1 | quiet ;;
101)
  timeout 590 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 --iters 48 \
      --json "$O/b16_flickr_tuned.json" --variants open_clip clipscratch:packed clipscratch:packed:tuned 2>&1 | quiet ;;
102)
  timeout 590 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 --iters 48 \
      --json "$O/b16_flickr_tuned_streams.json" --variants clipscratch:packed:streams:tuned clipscratch:packed:streams \
      clipscratch:packed:tuned 2>&1 | quiet ;;
103)
  timeout 250 $PY bench/ddp_stream_check.py --steps 6 2>&1 | quiet
  timeout 200 $PY bench/ddp_stream_check.py --steps 6 --backend nccl --procs 1 2>&1 | quiet ;;
100)
  timeout 400 $PY bench/profile_step.py --captions "$FLICKR" --model ViT-B-16 --top 70 \
      --variants clipscratch:packed clipscratch:packed:streams --json "$O/profile_b16_flickr_calls.json" 2>&1 | quiet ;;
81)
  checks 200 --only "fused backward"
  cp "$O/gpu_checks.json" "$O/gpu_checks_fused_backward.json"
  checks 380 --only "compiled step" ;;
82)
  timeout 580 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 \
      --json "$O/b16_flickr_qkv.json" --variants open_clip clipscratch:packed clipscratch:packed:noqkv 2>&1 | quiet ;;
83)
  timeout 580 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 --iters 48 \
      --json "$O/b16_flickr_qkv_abba.json" --variants clipscratch:packed:noqkv clipscratch:packed \
      clipscratch:packed clipscratch:packed:noqkv clipscratch:packed:noqkv@eager clipscratch:packed@eager 2>&1 | quiet ;;
84)
  timeout 580 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-32 --warmup-rounds 1 --iters 48 \
      --json "$O/b32_flickr_qkv.json" --variants open_clip clipscratch:packed:noqkv clipscratch:packed \
      clipscratch:packed:noqkv@eager clipscratch:packed@eager 2>&1 | quiet ;;
1)
  $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-32 --warmup-rounds 1 --json "$O/b32_flickr_eager.json" \
      --variants open_clip@eager clipscratch:packed@eager clipscratch:trimmed@eager 2>&1 | quiet
  timeout 470 $PY bench/train_step.py --captions "$MEMES" --models ViT-B-32 --warmup-rounds 1 --json "$O/b32_memes.json" \
      --variants open_clip@eager clipscratch:packed@eager clipscratch:trimmed@eager open_clip clipscratch:trimmed \
      clipscratch:packed 2>&1 | quiet ;;
2)
  timeout 400 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 --json "$O/b16_flickr.json" \
      --variants open_clip clipscratch:trimmed clipscratch:trimmed:fp8 2>&1 | quiet
  timeout 170 $PY bench/train_step.py --captions "$FLICKR" --models ViT-L-14 --warmup-rounds 1 --iters 12 \
      --json "$O/l14_flickr_eager.json" --variants open_clip@eager clipscratch:packed@eager clipscratch:packed:fp8@eager \
      clipscratch:trimmed@eager clipscratch:trimmed:fp8@eager 2>&1 | quiet ;;
3)
  timeout 200 $PY bench/max_batch.py --captions "$FLICKR" --models ViT-B-32 --impls open_clip clipscratch:packed \
      clipscratch:trimmed --json "$O/max_batch_flickr.json" 2>&1 | quiet
  timeout 250 $PY bench/data_fed.py --samples 30000 --workers 14 --variants uint8 gpu_decode nvimgcodec \
      --json "$O/data_fed_256.json" 2>&1 | quiet | grep -v "img/s"
  flickr_shards
  timeout 120 $PY bench/data_fed.py --pattern '/tmp/flickr_shards/shard-{000000..000007}.tar' --workers 14 \
      --variants uint8 nvimgcodec --json "$O/data_fed_flickr.json" 2>&1 | quiet ;;
4)
  checks 120
  timeout 450 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-32 --warmup-rounds 1 --json "$O/b32_flickr.json" \
      --variants open_clip clipscratch:packed clipscratch:trimmed 2>&1 | quiet ;;
5)
  timeout 330 $PY bench/train_step.py --captions "$MEMES" --models ViT-B-32 --warmup-rounds 1 --json "$O/b32_memes.json" \
      --variants open_clip clipscratch:packed 2>&1 | quiet
  timeout 200 $PY bench/profile_step.py --captions "$FLICKR" --model ViT-B-32 --variants clipscratch:packed clipscratch:trimmed \
      --json "$O/profile_b32_flickr.json" 2>&1 | quiet ;;
6)
  timeout 560 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 --json "$O/b16_flickr.json" \
      --variants clipscratch:packed clipscratch:packed:fp8 2>&1 | quiet ;;
8)
  timeout 150 $PY bench/attention_shapes.py --captions "$FLICKR" --json "$O/attention_shapes.json" 2>&1 | quiet
  timeout 300 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-32 --warmup-rounds 1 --json "$O/b32_flickr.json" \
      --variants open_clip clipscratch:packed 2>&1 | quiet
  timeout 120 $PY bench/profile_step.py --captions "$FLICKR" --model ViT-B-32 --variants clipscratch:packed \
      --json "$O/profile_b32_flickr.json" 2>&1 | quiet ;;
9)
  timeout 380 $PY bench/train_step.py --captions "$FLICKR" "$MEMES" --models ViT-B-32 --warmup-rounds 1 --json "$O/b32_both.json" \
      --variants open_clip clipscratch:packed 2>&1 | quiet
  timeout 200 $PY bench/data_fed.py --samples 30000 --workers 14 --variants gpu_decode nvimgcodec \
      --json "$O/data_fed_256.json" 2>&1 | quiet | grep -v "img/s" ;;
10)
  timeout 500 $PY bench/train_step.py --captions "$FLICKR" "$MEMES" --models ViT-B-32 --warmup-rounds 1 --iters 48 \
      --json "$O/b32_both_again.json" --variants open_clip clipscratch:packed 2>&1 | quiet ;;
11)
  checks 90 | grep nvimgcodec
  data_fed "gpu_decode nvimgcodec" "gpu_decode nvimgcodec" ;;
12)
  checks 60 | grep nvimgcodec
  data_fed nvimgcodec nvimgcodec ;;
7)
  data_fed "gpu_decode nvimgcodec" "uint8 nvimgcodec" ;;
13)
  timeout 300 $PY bench/data_fed.py --samples 30000 --workers 14 --variants gpu_decode nvimgcodec \
      --switch-intervals 0.005 0.0002 --gpu-busy --json "$O/data_fed_256_switch.json" 2>&1 | quiet | grep -v "img/s"
  timeout 260 $PY bench/max_batch.py --captions "$FLICKR" --models ViT-B-32 --checkpointing no \
      --impls open_clip clipscratch:packed clipscratch:packed:recompute --json "$O/max_batch_flickr.json" 2>&1 | quiet ;;
18)
  checks 60 | grep nvimgcodec
  for w in 14 6; do
    timeout 200 $PY bench/data_fed.py --samples 30000 --workers $w --variants gpu_decode nvimgcodec --feed-only \
        --json "$O/data_fed_256_workers$w.json" 2>&1 | quiet | grep -v "img/s"
  done ;;
17)
  timeout 260 $PY bench/data_fed.py --samples 30000 --workers 14 --variants gpu_decode nvimgcodec --stream-priorities 0 -1 \
      --json "$O/data_fed_256_priority.json" 2>&1 | quiet | grep -v "img/s"
  flickr_shards
  timeout 200 $PY bench/data_fed.py --pattern '/tmp/flickr_shards/shard-{000000..000007}.tar' --workers 14 \
      --variants gpu_decode nvimgcodec --stream-priorities 0 -1 --json "$O/data_fed_flickr_priority.json" 2>&1 | quiet ;;
19)
  (cd "${PREV_TREE:?PREV_TREE}" && fed256 170 --variants gpu_decode --feed-only --json "$O/data_fed_256_before.json")
  fed256 130 --variants gpu_decode --feed-only --separate --json "$O/data_fed_256_after.json"
  fed256 110 --variants gpu_decode --feed-only --workers 6 --json "$O/data_fed_256_after_workers6.json"
  flickr_shards
  timeout 110 $PY bench/data_fed.py --pattern '/tmp/flickr_shards/shard-{000000..000007}.tar' --workers 14 \
      --variants gpu_decode --json "$O/data_fed_flickr_after.json" 2>&1 | quiet
  fed256 100 --variants gpu_decode --feed-only --main-threads 1 --json "$O/data_fed_256_after_threads1.json" ;;
21)
  lscpu | grep -E "^CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|Model name"
  for i in 1 2; do
    fed256 110 --variants gpu_decode --json "$O/data_fed_256_default_$i.json"
    fed256 100 --variants gpu_decode --main-threads 1 --json "$O/data_fed_256_threads1_$i.json"
  done
  fed256 230 --variants gpu_decode --inductor cpp_wrapper=True --json "$O/data_fed_256_cpp_wrapper.json" ;;
22)
  fed256 150 --variants gpu_decode --separate --json "$O/data_fed_256_separate.json"
  fed256 250 --variants gpu_decode --separate --skip-fed --compile-mode reduce-overhead \
      --json "$O/data_fed_256_separate_cudagraphs.json" ;;
23)
  for i in 1 2; do
    fed256 140 --variants gpu_decode nvimgcodec --separate --json "$O/data_fed_256_default_stream_$i.json"
    fed256 120 --variants gpu_decode nvimgcodec --separate --train-stream side --json "$O/data_fed_256_side_stream_$i.json"
  done ;;
24)
  fed256 150 --variants gpu_decode --separate --json "$O/data_fed_256_waits.json"
  fed256 200 --variants gpu_decode --separate --skip-fed --compile-mode reduce-overhead \
      --json "$O/data_fed_256_waits_cudagraphs.json" ;;
25)
  fed256 280 --variants gpu_decode --separate --skip-fed --compile-mode reduce-overhead --stream-priorities 0 -1 \
      --json "$O/data_fed_256_cudagraphs_priority.json" ;;
26)
  fed256 250 --variants gpu_decode --separate --skip-fed --compile-mode reduce-overhead --gpu-busy \
      --json "$O/data_fed_256_cudagraphs_calls.json" ;;
27)
  fed256 200 --variants gpu_decode nvimgcodec --decode-calls --steps 20 --json "$O/data_fed_256_decode_calls.json" ;;
28)
  fed256 220 --variants gpu_decode --feed-in thread process --separate --json "$O/data_fed_256_process.json"
  fed256 250 --variants gpu_decode --feed-in thread process --separate --skip-fed --compile-mode reduce-overhead \
      --json "$O/data_fed_256_process_cudagraphs.json" ;;
29)
  timeout 560 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 --json "$O/b16_autotune.json" \
      --variants open_clip clipscratch:packed clipscratch:packed@max-autotune-no-cudagraphs 2>&1 | quiet ;;
30)
  timeout 560 $PY bench/train_step.py --captions "$FLICKR" --models ViT-L-14 --warmup-rounds 1 --json "$O/l14_fp8.json" \
      --variants clipscratch:packed clipscratch:packed:fp8 2>&1 | quiet ;;
31)
  shapes_shards
  if [ -n "${REVERSE:-}" ]; then  # this tree first: the order's own effect (caches warmed by the first run)
    trainer "$PWD" /tmp/trainer_after_first "$SHAPES"; trainer "${PREV_TREE:?PREV_TREE}" /tmp/trainer_before_second "$SHAPES"
  else
    trainer "${PREV_TREE:?PREV_TREE}" /tmp/trainer_before "$SHAPES"; trainer "$PWD" /tmp/trainer_after "$SHAPES"
  fi ;;
32)
  flickr_shards
  decoders /tmp/trainer_photos '/tmp/flickr_shards/shard-{000000..000007}.tar' ;;
33)
  shapes_shards
  decoders /tmp/trainer_shapes "$SHAPES" ;;
34)
  fed256 300 --variants uint8 gpu_decode --step trainer --json "$O/data_fed_256_trainer_step.json" ;;
35)
  shapes_shards
  trainer "$PWD" /tmp/trainer_long_cpu_workers "$SHAPES" data.gpu_decode=false \
      max_steps=250 log_every=50
  trainer "$PWD" /tmp/trainer_long_gpu_decode "$SHAPES" max_steps=250 log_every=50 ;;
36)
  $PY -c "import torch; x = torch.zeros(2, 4, 4, 3, dtype=torch.uint8).permute(0, 3, 1, 2); print('pinned keeps channels-last:', x.pin_memory().stride() == x.stride())"
  shapes_shards
  steady="data.gpu_decode=false max_steps=250 log_every=50"
  trainer "$PWD" /tmp/trainer_cpu_new "$SHAPES" $steady
  trainer "${PREV_TREE:?PREV_TREE}" /tmp/trainer_cpu_old "$SHAPES" $steady
  trainer "$PWD" /tmp/trainer_cpu_new_again "$SHAPES" $steady ;;
37)
  fed256 280 --variants uint8 --step trainer --json "$O/data_fed_256_trainer_step_cpu.json"
  flickr_shards
  trainer "$PWD" /tmp/trainer_photos_cpu '/tmp/flickr_shards/shard-{000000..000007}.tar' data.gpu_decode=false \
      max_steps=250 log_every=50 ;;
38)
  fed256 280 --variants uint8 --step trainer --separate --json "$O/data_fed_256_trainer_step_cpu_separate.json"
  fed256 250 --variants uint8 --step trainer --separate --workers 8 \
      --json "$O/data_fed_256_trainer_step_cpu_separate_workers8.json" ;;
39)
  checks 120 --only "packed text"
  fed256 280 --variants uint8 --step trainer --separate --compile-mode reduce-overhead --bucket 256 \
      --json "$O/data_fed_256_trainer_step_cpu_cudagraphs.json"
  trainer "$PWD" /tmp/trainer_cpu_cudagraphs "$SHAPES" data.gpu_decode=false cuda_graphs=true max_steps=250 log_every=50 ;;
40)
  shapes_shards
  trainer "$PWD" /tmp/trainer_cpu_cudagraphs_long "$SHAPES" data.gpu_decode=false cuda_graphs=true max_steps=600 \
      log_every=50
  flickr_shards
  trainer "$PWD" /tmp/trainer_photos_cpu_cudagraphs '/tmp/flickr_shards/shard-{000000..000007}.tar' \
      data.gpu_decode=false cuda_graphs=true max_steps=300 log_every=50 ;;
41)
  timeout 200 $PY bench/feed_profile.py --workers 14 --batches 200 --json "$O/feed_profile_workers14.json" 2>&1 \
      | quiet | tail -4
  trainer "$PWD" /tmp/trainer_cpu_cudagraphs_context "$SHAPES" data.gpu_decode=false cuda_graphs=true max_steps=600 \
      log_every=50 ;;
42)
  shapes_shards
  $PY bench/decode_rate.py /tmp/bench_shards/part000-000000.tar "$D/flickr8k-1000/images"
  run=0
  for tree in "$PWD" "${PREV_TREE:?PREV_TREE}" "$PWD"; do
    run=$((run + 1)); [ "$tree" = "$PWD" ] && name=this || name=prev
    echo "run $run: $name tree"
    $PY "$tree/bench/worker_rate.py" /tmp/bench_shards/part000-000000.tar --cpu-decode
    timeout 150 $PY "$tree/bench/feed_profile.py" --workers 14 --batches 200 \
        --json "$O/feed_profile_workers14_run${run}_$name.json" 2>&1 | quiet | grep -A2 "uint8 samples/s"
  done ;;
43)
  shapes_shards
  trainer "$PWD" /tmp/trainer_cpu_cudagraphs_fast_workers "$SHAPES" data.gpu_decode=false cuda_graphs=true \
      max_steps=600 log_every=50
  trainer "$PWD" /tmp/trainer_cpu_fast_workers "$SHAPES" data.gpu_decode=false max_steps=300 log_every=50 ;;
44)
  fed256 280 --variants uint8 --step trainer --separate --compile-mode reduce-overhead --bucket 256 \
      --json "$O/data_fed_256_trainer_step_cpu_cudagraphs.json"
  flickr_shards
  trainer "$PWD" /tmp/trainer_photos_cpu_cudagraphs_fast_workers '/tmp/flickr_shards/shard-{000000..000007}.tar' \
      data.gpu_decode=false cuda_graphs=true max_steps=300 log_every=50 ;;
45)
  text_bound 380 200 open_clip clipscratch:packed ;;
48)
  timeout 150 $PY bench/attention_shapes.py --captions "$FLICKR" --text-only --json "$O/attention_text_gpu.json" 2>&1 | quiet
  timeout 400 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-32 --warmup-rounds 1 --iters 48 \
      --json "$O/b32_flickr_attn.json" --variants open_clip clipscratch:packed clipscratch:packed:attn=math 2>&1 | quiet ;;
49)
  checks 100 --only "packed text"
  for captions in "$FLICKR" "$MEMES"; do
    timeout 260 $PY bench/train_step.py --captions "$captions" --models ViT-B-32 --warmup-rounds 1 --iters 48 \
        --json "$O/b32_$(basename "$(dirname "$captions")")_efficient.json" \
        --variants open_clip clipscratch:packed clipscratch:packed:attn=efficient 2>&1 | quiet
  done ;;
55)
  timeout 200 $PY bench/attention_shapes.py --captions "$FLICKR" --image-only --json "$O/attention_image_gpu.json" 2>&1 | quiet
  TORCH_LOGS=cudagraphs,recompiles timeout 300 $PY bench/train_step.py --captions "$MEMES" --models ViT-B-32 \
      --warmup-rounds 1 --iters 48 --json "$O/b32_memes_graphs_calls.json" --variants clipscratch:packed@reduce-overhead \
      > "$O/b32_memes_graphs_calls.log" 2>&1
  grep -v "^W[0-9]" "$O/b32_memes_graphs_calls.log" | cut -c1-400 | grep -iE "record|skip|recompil|warm|^\{|^\|" | head -60 ;;
62)
  timeout 580 $PY bench/train_step.py --captions "$MEMES" --models ViT-B-32 --warmup-rounds 1 --iters 48 \
      --json "$O/b32_memes_final.json" --variants open_clip clipscratch:packed clipscratch:packed@reduce-overhead 2>&1 | quiet ;;
64)
  timeout 200 $PY bench/bias_activation.py --json "$O/bias_activation.json" 2>&1 | quiet
  checks 300 --only "fused backward" ;;
65)
  timeout 580 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 \
      --json "$O/b16_flickr_fused.json" --variants open_clip clipscratch:packed clipscratch:packed:unfused 2>&1 | quiet ;;
66)
  timeout 580 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-32 --warmup-rounds 1 --iters 48 \
      --json "$O/b32_flickr_fused.json" --variants open_clip clipscratch:packed clipscratch:packed:unfused 2>&1 | quiet ;;
80)
  checks 400 --only "compiled step fp8" ;;
90)
  checks 400 --only "text stream" ;;
91)
  timeout 580 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 --iters 48 \
      --json "$O/b16_flickr_text_stream.json" --variants open_clip clipscratch:packed clipscratch:packed:streams \
      clipscratch:packed:streams-high 2>&1 | quiet ;;
92)
  timeout 580 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 --iters 48 \
      --json "$O/b16_flickr_text_stream_back.json" --variants clipscratch:packed:streams-high clipscratch:packed:streams \
      clipscratch:packed clipscratch:packed@eager clipscratch:packed:streams@eager 2>&1 | quiet ;;
93)
  timeout 580 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-32 --warmup-rounds 1 --iters 48 \
      --json "$O/b32_flickr_text_stream.json" --variants open_clip clipscratch:packed clipscratch:packed:streams \
      clipscratch:packed:streams-high clipscratch:packed 2>&1 | quiet ;;
94)
  flickr_runs 230 2 200 text_stream compile=true text_stream_true text_stream_false
  $PY bench/compare_curves.py runs/text_stream_false/metrics.jsonl runs/text_stream_true/metrics.jsonl \
      --labels "compiled whole (text_stream=false)" "towers apart, text on a side stream (text_stream=true)" \
      --out "$O/text_stream_vs_whole.png" ;;
96)
  timeout 400 $PY bench/ddp_stream_check.py --steps 6 2>&1 | quiet ;;
95)
  for run in false false_again true compiled_true; do
    stream=${run%_again}; stream=${stream#compiled_}; compiled=false; [ "${run#compiled_}" != "$run" ] && compiled=true
    timeout 200 $PY -m accelerate.commands.launch --multi_gpu --num_processes 2 train.py text_stream=$stream \
        compile=$compiled max_steps=60 save_every=60 eval_every=0 evals={} precision=bf16 output_dir=runs/ddp_$run 2>&1 \
        | grep -vE "it/s|s/it|Warning|warn" | tail -1
    cp runs/ddp_$run/metrics.jsonl "$O/ddp_stream_${run}_metrics.jsonl"
  done
  $PY - <<'PYEOF'
import json
from safetensors.torch import load_file
def weights(run):
    return load_file(f"runs/ddp_{run}/checkpoints/step_00000060/model.safetensors")
def losses(run):
    return [r["loss"] for r in map(json.loads, open(f"runs/ddp_{run}/metrics.jsonl")) if "loss" in r]
ref = weights("false")
for run in ("false_again", "true", "compiled_true"):
    w = weights(run)
    diff = max(float((w[k].double() - ref[k].double()).abs().max()) for k in ref)
    identical = all(bool((w[k] == ref[k]).all()) for k in ref)
    print(json.dumps({"run": run, "weights_identical_to_false": identical, "max_abs_weight_diff": diff,
                      "loss_at_60": losses(run)[-1], "loss_at_60_false": losses("false")[-1]}))
PYEOF
  ;;
89)
  timeout 480 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 --iters 48 \
      --json "$O/b16_flickr_streams_abba.json" --variants clipscratch:packed clipscratch:packed:streams \
      clipscratch:packed:streams clipscratch:packed 2>&1 | quiet ;;
88)
  timeout 580 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 --iters 48 \
      --json "$O/b16_flickr_streams.json" --variants clipscratch:packed clipscratch:packed:towers \
      clipscratch:packed:streams clipscratch:packed 2>&1 | quiet ;;
87)
  text_bound 330 200 open_clip clipscratch:packed ;;
86)
  flickr_runs 170 2 300 fused_qkv "" qkv_true qkv_false qkv_false_again
  $PY bench/compare_curves.py runs/qkv_false/metrics.jsonl runs/qkv_true/metrics.jsonl \
      --labels "fused_qkv=false" "fused_qkv=true (the default)" --out "$O/qkv_vs_plain.png"
  $PY bench/compare_curves.py runs/qkv_false/metrics.jsonl runs/qkv_false_again/metrics.jsonl \
      --labels "fused_qkv=false" "fused_qkv=false, again" --out "$O/plain_vs_plain_again.png" ;;
79)
  flickr_runs 250 3 300 fused_activation compile=true fused_true fused_false
  $PY bench/compare_curves.py runs/fused_false/metrics.jsonl runs/fused_true/metrics.jsonl \
      --labels "compile=true, fused_activation=false" "compile=true (fused_activation=true)" --out "$O/fused_vs_unfused.png" ;;
78)
  timeout 400 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-32 --warmup-rounds 2 --iters 48 \
      --json "$O/b32_flickr_fused_graphs.json" --variants clipscratch:packed:unfused@reduce-overhead \
      clipscratch:packed@reduce-overhead clipscratch:packed@reduce-overhead clipscratch:packed:unfused@reduce-overhead \
      2>&1 | quiet ;;
77)
  checks 500 --only "compiled step" ;;
76)
  timeout 400 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-32 --warmup-rounds 1 --iters 48 \
      --json "$O/b32_flickr_fused_abba.json" --variants clipscratch:packed:unfused clipscratch:packed \
      clipscratch:packed clipscratch:packed:unfused clipscratch:packed@eager clipscratch:packed:fused@eager 2>&1 | quiet
  timeout 170 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 \
      --json "$O/b16_flickr_fused_eager.json" --variants clipscratch:packed@eager clipscratch:packed:fused@eager \
      2>&1 | quiet ;;
75)
  timeout 580 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 --iters 48 \
      --json "$O/b16_flickr_fused_abba.json" --variants clipscratch:packed:unfused clipscratch:packed \
      clipscratch:packed clipscratch:packed:unfused 2>&1 | quiet ;;
74)
  timeout 150 $PY bench/bias_activation_compiled.py --code-dir "$O" 2>&1 | quiet
  checks 420 --only "compiled step" ;;
73)
  timeout 400 $PY bench/bias_activation_compiled.py --code-dir "$O" 2>&1 | quiet ;;
72)
  checks 500 --only "compiled step" ;;
71)
  checks 150 --only "fused backward"
  timeout 420 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 \
      --json "$O/b16_flickr_fused_final.json" --variants open_clip clipscratch:packed clipscratch:packed:unfused 2>&1 | quiet ;;
63)
  timeout 580 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 \
      --json "$O/b16_flickr_final.json" --variants open_clip clipscratch:packed 2>&1 | quiet ;;
61)
  timeout 400 $PY bench/attention_shapes.py --captions "$FLICKR" --image-sweep --json "$O/attention_image_sweep.json" 2>&1 | quiet ;;
60)
  checks 200 --only "attention kernel" ;;
59)
  checks 120 --only "attention kernel"
  timeout 460 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-32 --warmup-rounds 1 --iters 48 \
      --json "$O/b32_flickr_attention_kernel.json" --variants open_clip clipscratch:packed clipscratch:packed:sdpa \
      clipscratch:packed@reduce-overhead clipscratch:packed:sdpa@reduce-overhead 2>&1 | quiet ;;
58)
  timeout 250 $PY bench/attention_shapes.py --captions "$FLICKR" --image-sweep --json "$O/attention_image_sweep.json" 2>&1 | quiet
  timeout 200 $PY bench/attention_shapes.py --captions "$FLICKR" --image-only --json "$O/attention_image_gpu.json" 2>&1 | quiet ;;
56|57)
  [ "$PART" = 56 ] && captions="$MEMES" || captions="$FLICKR"
  timeout 580 $PY bench/train_step.py --captions "$captions" --models ViT-B-32 --warmup-rounds 1 --iters 48 \
      --json "$O/b32_$(basename "$(dirname "$captions")")_graphs_img.json" --variants open_clip \
      clipscratch:packed@reduce-overhead clipscratch:packed:img=efficient@reduce-overhead 2>&1 | quiet ;;
50)
  timeout 580 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-16 --warmup-rounds 1 \
      --json "$O/b16_flickr_efficient.json" --variants open_clip clipscratch:packed clipscratch:packed@reduce-overhead \
      clipscratch:packed:attn=efficient 2>&1 | quiet ;;
54)
  text_bound 250 250 open_clip ;;
53)
  checks 100 --only "packed text"
  timeout 420 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-32 --warmup-rounds 1 --iters 48 \
      --json "$O/b32_flickr_default_kernel.json" --variants open_clip clipscratch:packed clipscratch:packed:attn=varlen \
      2>&1 | quiet ;;
51|52)
  [ "$PART" = 51 ] && captions="$FLICKR" || captions="$MEMES"
  timeout 580 $PY bench/train_step.py --captions "$captions" --models ViT-B-32 --warmup-rounds 1 --iters 48 \
      --json "$O/b32_$(basename "$(dirname "$captions")")_graphs.json" --variants open_clip open_clip@reduce-overhead \
      clipscratch:packed clipscratch:packed@reduce-overhead clipscratch:packed:attn=efficient@reduce-overhead 2>&1 | quiet ;;
46|47)
  timeout 300 $PY bench/fp8_ceiling.py --json "$O/fp8_ceiling.json" 2>&1 | quiet ;;&
46)
  timeout 250 $PY bench/profile_step.py --captions "$FLICKR" --model ViT-B-16 --variants clipscratch:packed --top 40 \
      --json "$O/profile_b16_flickr_top40.json" 2>&1 | quiet ;;
20)
  timeout 280 $PY bench/profile_step.py --captions "$FLICKR" --model ViT-B-16 --variants clipscratch:packed open_clip \
      --json "$O/profile_b16_flickr.json" 2>&1 | quiet
  timeout 200 $PY bench/attention_shapes.py --captions "$FLICKR" --json "$O/attention_shapes_flex.json" 2>&1 | quiet ;;
16)
  timeout 230 $PY bench/data_fed.py --samples 30000 --workers 14 --variants gpu_decode nvimgcodec --gpu-busy \
      --json "$O/data_fed_256_calls.json" 2>&1 | quiet | grep -v "img/s" ;;&
15|16)
  timeout 300 $PY bench/train_step.py --captions "$FLICKR" --models ViT-B-32 --warmup-rounds 1 --json "$O/b32_recompute.json" \
      --variants open_clip clipscratch:packed clipscratch:packed:recompute 2>&1 | quiet ;;
esac
