"""CLIP's byte-level BPE tokenizer on the Rust ``tokenizers`` library.

Output is identical to OpenAI's ``clip.tokenize(texts, truncate=True)``:

1. clean as OpenAI does: ``ftfy.fix_text``, ``html.unescape`` twice, collapse
   whitespace, strip, lowercase (pure-ASCII text that ftfy cannot change skips ftfy);
2. split into words with OpenAI's regular expression (the ``regex`` module, as
   OpenAI), where ``<|startoftext|>`` / ``<|endoftext|>`` written in a caption are
   matched as words and, as in OpenAI's tokenizer, become the special tokens;
3. byte-level BPE with the ``</w>`` end-of-word suffix in Rust, batched.

The vocabulary file ``bpe_simple_vocab_16e6.txt.gz`` is OpenAI's (MIT licence,
see ``NOTICE_bpe_vocab.txt`` beside it).
"""
from __future__ import annotations

import functools
import gzip
import html
import os
from typing import List, Sequence, Union

import ftfy
import regex
import torch
from tokenizers import Tokenizer as _RustTokenizer
from tokenizers import models, pre_tokenizers

VOCAB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")
_FTFY_INVARIANT = regex.compile(r"[\x20-\x25\x27-\x7e\t\n]*")  # printable ASCII without '&'


def bytes_to_unicode() -> dict:
    """GPT-2's map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def clean_text(text: str) -> str:
    """OpenAI's basic_clean + whitespace_clean + lower()."""
    if not _FTFY_INVARIANT.fullmatch(text):
        text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text))
    text = _WHITESPACE.sub(" ", text.strip()).strip()
    return text.lower()


def _load_bpe(path: str):
    merges = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in merges[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [SOT, EOT]
    return {tok: i for i, tok in enumerate(vocab)}, merges


class Tokenizer:
    """Callable: ``tokenizer(texts) -> LongTensor[N, context_length]``."""

    def __init__(self, context_length: int = 77, vocab_path: str = VOCAB_PATH):
        self.context_length = context_length
        vocab, merges = _load_bpe(vocab_path)
        bpe = models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", fuse_unk=False)
        self._rust = _RustTokenizer(bpe)
        self._rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        self._rust.add_special_tokens([SOT, EOT])
        self.vocab_size = len(vocab)
        self.sot_token_id = vocab[SOT]
        self.eot_token_id = vocab[EOT]
        self._id_to_token = {i: t for t, i in vocab.items()}
        self._byte_decoder = {c: b for b, c in bytes_to_unicode().items()}

    def words(self, text: str) -> List[str]:
        return _WORD_PATTERN.findall(clean_text(text))

    def encode(self, text: str) -> List[int]:
        """BPE ids of one text, without start/end tokens."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        words = [self.words(t) for t in texts]
        nonempty = [i for i, w in enumerate(words) if w]
        ids: List[List[int]] = [[] for _ in texts]
        if nonempty:
            encodings = self._rust.encode_batch([words[i] for i in nonempty], is_pretokenized=True, add_special_tokens=False)
            for i, enc in zip(nonempty, encodings):
                ids[i] = enc.ids
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to text (special tokens and padding dropped)."""
        tokens = [self._id_to_token[int(i)] for i in ids if int(i) not in (0, self.sot_token_id, self.eot_token_id)]
        words = "".join(tokens).split("</w>")
        decoded = (bytearray(self._byte_decoder[c] for c in w).decode("utf-8", errors="replace") for w in words)
        return " ".join(decoded).strip()

    def __call__(self, texts: Union[str, Sequence[str]], context_length: int = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ctx = context_length or self.context_length
        result = torch.zeros(len(texts), ctx, dtype=torch.long)
        for row, ids in enumerate(self.encode_batch(texts)):
            tokens = [self.sot_token_id] + ids[: ctx - 2] + [self.eot_token_id]
            result[row, : len(tokens)] = torch.tensor(tokens)
        return result


@functools.lru_cache(maxsize=4)
def get_tokenizer(context_length: int = 77) -> Tokenizer:
    return Tokenizer(context_length=context_length)


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77) -> torch.Tensor:
    return get_tokenizer(context_length)(texts)
