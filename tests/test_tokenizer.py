"""The tokenizer is identical to OpenAI's clip.tokenize on hard inputs and on real captions."""
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import clipscratch
from clipscratch.tokenizer import clean_text

clip = pytest.importorskip("clip")

CORPUS = [
    "a photo of a cat", "", "   ", "A Photo Of A DOG.", "two  dogs\tplaying\n\nin the snow",
    "Café déjà vu — naïve coöperation", "日本語のキャプション、東京タワー", "Привет, мир!", "مرحبا بالعالم",
    "emoji 😀🐶🚀👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵", "fish &amp; chips &lt;b&gt;bold&lt;/b&gt; &#39;quoted&#39; &amp;amp;",
    "mojibake: Ã©tÃ© cafÃ© â€œquotedâ€\x9d", "ﬁne ligatures ﬂow", "ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ", "curly “quotes” and ‘single’",
    "<|endoftext|> in the middle <|endoftext|>", "<|startoftext|>start", "x<<|endoftext|>y", "<|ENDOFTEXT|> upper",
    "<|endoftext| broken", "it's they're we've I'm you'll he'd", "IT'S LOUD", "numbers 1234567 3.14 1e-5 #42 @user",
    "url https://example.com/a?b=c&d=e", "tabs\tand\x0bvertical\x0cfeed\r\nwindows", "control \x00\x07\x1b[31mred\x1b[0m",
    "zero\u200bwidth\u00a0nbsp\u2028line", "ß ẞ İstanbul ǅ", "a" * 300, " ".join(["word"] * 200),
    "supercalifragilisticexpialidocious " * 20, "🙂" * 100, "\x00", "a \x00 b", "nul&#0;entity &#x0; ok",
]


def _same(texts):
    ours = clipscratch.tokenize(texts, truncate=True)
    ref = clip.tokenize(texts, truncate=True)
    assert ours.shape == ref.shape == (len(texts), 77)
    mismatched = [t for t, a, b in zip(texts, ours, ref) if not torch.equal(a, b)]
    assert not mismatched, f"differs from OpenAI on {mismatched[:3]!r}"


def test_identical_to_openai_on_hard_corpus():
    _same(CORPUS)


def test_special_token_text_inside_a_caption_is_what_openai_makes_of_it():
    tokens = clipscratch.tokenize(["a <|endoftext|> b"])[0]
    assert (tokens == 49407).sum().item() == 2  # OpenAI's encoder maps the written token to the special id
    assert torch.equal(tokens, clip.tokenize(["a <|endoftext|> b"])[0])


def test_batches_of_zero_and_one_and_other_context_lengths():
    assert clipscratch.tokenize([]).shape == (0, 77)
    tokenizer = clipscratch.get_tokenizer()
    assert tokenizer.encode_batch([]) == [] and tokenizer.encode("") == []
    texts = ["a photo of a cat", "", "Café “x”"]
    for ctx in (8, 32, 77, 100):
        assert torch.equal(tokenizer(texts, context_length=ctx), clip.tokenize(texts, context_length=ctx, truncate=True))


def test_over_long_captions_truncate_with_eot_last():
    tokens = clipscratch.tokenize(["word " * 200], truncate=True)[0]
    assert tokens[0] == 49406 and tokens[-1] == 49407 and (tokens != 0).all()
    assert torch.equal(tokens, clip.tokenize(["word " * 200], truncate=True)[0])


def test_openai_signature_raises_on_over_long_text_unless_truncate():
    """clip.tokenize(texts, context_length=77, truncate=False): same defaults, same exception type."""
    fits, long = "a photo of a cat", "word " * 80  # 82 tokens with start and end
    assert torch.equal(clipscratch.tokenize(fits), clip.tokenize(fits))
    for fn in (clipscratch.tokenize, clip.tokenize):
        with pytest.raises(RuntimeError, match="too long for context length 77"):
            fn([fits, long])
    assert torch.equal(clipscratch.tokenize(["word " * 75]), clip.tokenize(["word " * 75]))  # 77 exactly fits
    assert torch.equal(clipscratch.tokenize([long], context_length=100), clip.tokenize([long], context_length=100))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=60), min_size=1, max_size=4))
def test_identical_to_openai_on_random_unicode(texts):
    _same(texts)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=80))
def test_ascii_fast_path_equals_ftfy_path(text):
    import html

    import ftfy
    import regex

    slow = regex.sub(r"\s+", " ", html.unescape(html.unescape(ftfy.fix_text(text))).strip()).strip().lower()
    assert clean_text(text) == slow


def test_identical_to_openai_on_all_flickr8k_captions(shared_data):
    """All 40,460 human captions of Flickr8k (``image.jpg#N<TAB>caption``), as training reads them."""
    from clipscratch.data.captions import read_captions

    table = read_captions(os.path.join(shared_data, "flickr8k-captions", "Flickr8k.token.txt"))
    texts = [c for caps in table.values() for c in caps]
    assert len(texts) == 40460
    for i in range(0, len(texts), 2048):
        _same(texts[i : i + 2048])


def test_identical_to_openai_on_hateful_memes_text(shared_data):
    import json

    with open(os.path.join(shared_data, "hateful-memes-text", "dev_seen.jsonl")) as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    assert len(texts) == 500
    _same(texts)


def test_decode_inverts_encode_on_clean_text():
    tok = clipscratch.get_tokenizer()
    assert tok.decode(tok("a photo of two dogs")[0]) == "a photo of two dogs"
