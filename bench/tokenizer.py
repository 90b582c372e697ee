"""Tokenizer throughput: clipscratch vs OpenAI's SimpleTokenizer (clip.tokenize).

    python bench/tokenizer.py                      # generated caption-like corpus
    python bench/tokenizer.py --captions ../shared/data/flickr8k-captions/Flickr8k.token.txt   # real captions
    python bench/tokenizer.py --captions ../shared/data/hateful-memes-text/train.jsonl          # meme text
    python bench/tokenizer.py --captions FILE.txt  # any caption file data/captions.py reads, or one caption per line

Both tokenizers start cold (OpenAI's BPE cache empty) in each of --repeats runs, the fastest\nrun counts, and outputs are checked equal.
"""
import argparse
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SUBJECTS = ["a man", "two women", "a small dog", "the old bridge", "a red car", "children", "a chef", "an astronaut",
            "a bowl of ramen", "the city skyline", "a vintage camera", "three horses", "a wooden table", "a surfer"]
ACTIONS = ["standing next to", "riding", "looking at", "sitting on", "walking across", "holding", "cooking",
           "flying over", "painted on", "parked beside", "jumping off", "reflected in"]
PLACES = ["a busy street", "the beach at sunset", "a snowy mountain", "a kitchen counter", "the park", "a museum hall",
          "a rainy window", "the desert", "a neon-lit alley", "an empty stadium", "a field of sunflowers"]
EXTRAS = ["", " in black and white", " at night", ", shot on film", " | stock photo", " (2019)", " - high resolution",
          " #travel #photography", " 4k wallpaper", " with bokeh"]
# A fifth of the captions get one of these (accents, CJK, emoji, symbols, curly quotes, Cyrillic).
UNICODE_EXTRAS = [" — Café Müller", " 東京", " 😀", " São Paulo", " Zürich ©2019", " 25°C", " €20 off", " ’s best",
                  " “Summer” poster", " Москва", " naïve art", " ½ price"]


def generated_captions(n: int, seed: int = 0):
    rng = random.Random(seed)
    words = [w for s in SUBJECTS + ACTIONS + PLACES for w in s.split()]
    out = []
    for i in range(n):
        extra = rng.choice(UNICODE_EXTRAS if rng.random() < 0.2 else EXTRAS)
        cap = f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(PLACES)}{extra}"
        cap += " " + " ".join(rng.choice(words) + str(rng.randint(0, 999)) * (rng.random() < 0.1) for _ in range(rng.randint(0, 8)))
        out.append(cap.capitalize() if i % 3 else cap.upper() if i % 7 == 0 else cap)
    return out


def read_captions(path: str):
    """Every caption of a caption file, or its lines when it is a plain list of captions."""
    from clipscratch.data.captions import read_table
    from clipscratch.errors import ClipscratchError

    try:
        captions = [c for record in read_table(path) for c in record.captions]
    except ClipscratchError:
        captions = []
    return captions or [line for line in open(path, encoding="utf-8").read().splitlines() if line.strip()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", help="caption file (Flickr token, CSV/TSV, JSONL) or one caption per line")
    parser.add_argument("-n", type=int, default=200000, help="number of generated captions")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved cold runs of each tokenizer")
    args = parser.parse_args()
    captions = read_captions(args.captions) if args.captions else generated_captions(args.n)

    import clip
    from clipscratch.text_cleaning import _fix_quotes_only, ftfy_leaves_unchanged, is_plain_ascii
    from clipscratch.tokenizer import Tokenizer

    ascii_only = [c for c in captions if is_plain_ascii(c)]
    unchanged = sum(not is_plain_ascii(c) and ftfy_leaves_unchanged(c) for c in captions)
    quotes = sum(not is_plain_ascii(c) and not ftfy_leaves_unchanged(c) and _fix_quotes_only(c) is not None for c in captions)
    print(f"{len(captions)} captions: {len(ascii_only)} plain ASCII; of the rest {unchanged} provably unchanged by ftfy, "
          f"{quotes} only quotes to uncurl, {len(captions) - len(ascii_only) - unchanged - quotes} through ftfy")

    def run_ours(texts):
        tokenizer = Tokenizer()  # cold cache
        return torch.cat([tokenizer(texts[i : i + args.batch]) for i in range(0, len(texts), args.batch)])

    def run_openai(texts):
        clip.simple_tokenizer.SimpleTokenizer.__init__(clip.clip._tokenizer)  # cold cache
        return torch.cat([clip.tokenize(texts[i : i + args.batch], truncate=True) for i in range(0, len(texts), args.batch)])

    for label, texts in (("all captions", captions), ("ASCII captions", ascii_only)):
        t_ours, t_ref, ratios = [], [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine noise
            t0 = time.perf_counter()
            ours = run_ours(texts)
            t1 = time.perf_counter()
            ref = run_openai(texts)
            t2 = time.perf_counter()
            assert torch.equal(ours, ref), "outputs differ"
            t_ours.append(t1 - t0)
            t_ref.append(t2 - t1)
            ratios.append((t2 - t1) / (t1 - t0))
        print(f"{label:>15}: OpenAI {len(texts) / min(t_ref):>9,.0f}/s   clipscratch {len(texts) / min(t_ours):>9,.0f}/s   "
              f"speed-up median {statistics.median(ratios):5.1f}x (runs: {', '.join(f'{r:.1f}' for r in ratios)})   "
              f"outputs identical")


if __name__ == "__main__":
    main()
