"""Tokenizer throughput: clipscratch vs OpenAI's SimpleTokenizer (clip.tokenize).

    python bench/tokenizer.py                      # generated caption-like corpus
    python bench/tokenizer.py --captions FILE.txt  # one caption per line (e.g. real alt-texts)

Both tokenizers start cold (OpenAI's BPE cache empty), and outputs are checked equal.
"""
import argparse
import random
import time

import torch

SUBJECTS = ["a man", "two women", "a small dog", "the old bridge", "a red car", "children", "a chef", "an astronaut",
            "a bowl of ramen", "the city skyline", "a vintage camera", "three horses", "a wooden table", "a surfer"]
ACTIONS = ["standing next to", "riding", "looking at", "sitting on", "walking across", "holding", "cooking",
           "flying over", "painted on", "parked beside", "jumping off", "reflected in"]
PLACES = ["a busy street", "the beach at sunset", "a snowy mountain", "a kitchen counter", "the park", "a museum hall",
          "a rainy window", "the desert", "a neon-lit alley", "an empty stadium", "a field of sunflowers"]
EXTRAS = ["", " in black and white", " at night", ", shot on film", " | stock photo", " (2019)", " - high resolution",
          " #travel #photography", " 4k wallpaper", " with bokeh", " — Café Müller", " 東京", " 😀"]


def generated_captions(n: int, seed: int = 0):
    rng = random.Random(seed)
    words = [w for s in SUBJECTS + ACTIONS + PLACES for w in s.split()]
    out = []
    for i in range(n):
        cap = f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(PLACES)}{rng.choice(EXTRAS)}"
        cap += " " + " ".join(rng.choice(words) + str(rng.randint(0, 999)) * (rng.random() < 0.1) for _ in range(rng.randint(0, 8)))
        out.append(cap.capitalize() if i % 3 else cap.upper() if i % 7 == 0 else cap)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", help="text file with one caption per line")
    parser.add_argument("-n", type=int, default=50000, help="number of generated captions")
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()
    captions = open(args.captions).read().splitlines() if args.captions else generated_captions(args.n)

    import clip
    from clipscratch.tokenizer import Tokenizer, _is_plain_ascii

    ascii_only = [c for c in captions if _is_plain_ascii(c)]
    print(f"{len(captions)} captions, {len(ascii_only)} of them plain ASCII (no ftfy needed)")
    for label, texts in (("all captions", captions), ("ASCII captions", ascii_only)):
        ours_tok = Tokenizer()  # cold caches on both sides
        clip.simple_tokenizer.SimpleTokenizer.__init__(clip.clip._tokenizer)
        t_ours, ours = _timed(lambda: torch.cat([ours_tok(texts[i : i + args.batch]) for i in range(0, len(texts), args.batch)]))
        t_ref, ref = _timed(lambda: torch.cat([clip.tokenize(texts[i : i + args.batch], truncate=True) for i in range(0, len(texts), args.batch)]))
        assert torch.equal(ours, ref), "outputs differ"
        print(f"{label:>15}: OpenAI {len(texts) / t_ref:>9,.0f}/s   clipscratch {len(texts) / t_ours:>9,.0f}/s   "
              f"{t_ref / t_ours:5.1f}x   (outputs identical)")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out

if __name__ == "__main__":
    main()
