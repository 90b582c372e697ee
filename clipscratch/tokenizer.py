"""CLIP's byte-level BPE tokenizer on the Rust ``tokenizers`` library.

Output is identical to OpenAI's ``clip.tokenize`` (same signature: over-long text raises
unless ``truncate=True``):

1. clean as OpenAI does: ``ftfy.fix_text``, ``html.unescape`` twice, collapse
   whitespace, strip, lowercase; text that ftfy provably leaves unchanged skips it
   (see ``text_cleaning.py``);
2. split into words with OpenAI's regular expression (the ``regex`` module, as
   OpenAI; the standard ``re`` for ASCII text, where both agree), where ``<|startoftext|>`` / ``<|endoftext|>`` written in a caption are
   matched as words and, as in OpenAI's tokenizer, become the special tokens;
3. byte-level BPE with the ``</w>`` end-of-word suffix in Rust, batched over the
   chunks (text between spaces) not seen before; a chunk -> ids cache makes
   repeated chunks free.

The vocabulary file ``bpe_simple_vocab_16e6.txt.gz`` is OpenAI's (MIT licence,
see ``NOTICE_bpe_vocab.txt`` beside it).
"""
from __future__ import annotations

import array
import functools
import gzip
import os
import re
from typing import List, Sequence, Union

import numpy as np
import regex
import torch
from tokenizers import Tokenizer as _RustTokenizer
from tokenizers import models, pre_tokenizers

from .errors import TextTooLongError
from .text_cleaning import clean_text, is_plain_ascii

VOCAB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
# For ASCII text the same split with the standard library's (faster) engine.
_ASCII_WORD_PATTERN = re.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-zA-Z]+|[0-9]|[^\sa-zA-Z0-9]+""")
_CACHE_LIMIT = 1_000_000  # chunks remembered before the BPE cache is cleared
_MARKER = "\x00"  # joins texts in a batch; never a chunk of cleaned text (see Tokenizer._flat_ids)
_MARKER_IDS = array.array("i", [-1]).tobytes()


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


def split_chunks(text: str) -> List[str]:
    """Clean ``text`` and cut it at spaces. No word of OpenAI's pattern spans a space, so
    the words of a text are the words of its chunks, in order; chunks repeat far more
    than whole captions, which makes them a good cache key."""
    if is_plain_ascii(text):
        return text.lower().split()
    cleaned = clean_text(text)
    return cleaned.split(" ") if cleaned else []


def split_words(text: str) -> List[str]:
    """Clean ``text`` and split it into words with OpenAI's pattern."""
    return [w for chunk in split_chunks(text) for w in _chunk_words(chunk)]


def _chunk_words(chunk: str) -> List[str]:
    pattern = _ASCII_WORD_PATTERN if chunk.isascii() else _WORD_PATTERN
    return pattern.findall(chunk)


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
        self._chunk_ids: dict = {_MARKER: _MARKER_IDS}  # space-free chunk -> int32 BPE ids as bytes

    def words(self, text: str) -> List[str]:
        return split_words(text)

    def encode(self, text: str) -> List[int]:
        """BPE ids of one text, without start/end tokens."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        flat, starts, ends = self._flat_ids(texts)
        return [flat[s:e].tolist() for s, e in zip(starts, ends)]

    def _flat_ids(self, texts: Sequence[str]):
        """All texts' ids in one array, and each text's [start, end) in it.

        The cleaned, lower-cased texts are joined with a marker chunk and split once. The
        marker is NUL, which cleaned text never holds (plain ASCII excludes it, ftfy removes
        it and ``html.unescape`` turns ``&#0;`` into U+FFFD). Each chunk's ids are cached as
        int32 bytes, so a batch's ids are one ``bytes.join``; the marker's id (-1) shows where
        each text ends."""
        if not texts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        lowered = [text.lower() if is_plain_ascii(text) else clean_text(text) for text in texts]
        chunks = f" {_MARKER} ".join(lowered).split()
        cache = self._chunk_ids
        missing = set(chunks).difference(cache)
        if missing:
            if len(cache) + len(missing) > _CACHE_LIMIT:
                cache.clear()
                cache[_MARKER] = _MARKER_IDS
            cache.update(self._encode_chunks(missing))
        flat = np.frombuffer(b"".join(map(cache.__getitem__, chunks)), dtype=np.int32).astype(np.int64)
        markers = np.flatnonzero(flat == -1)
        starts = np.concatenate([[0], markers + 1])
        ends = np.concatenate([markers, [len(flat)]])
        return flat, starts, ends

    def _encode_chunks(self, chunks) -> dict:
        """BPE ids (int32 bytes) of each chunk; every distinct word goes through the Rust BPE once."""
        words = {c: _chunk_words(c) for c in chunks}
        unique = list({w for ws in words.values() for w in ws})
        encodings = self._rust.encode_batch([[w] for w in unique], is_pretokenized=True, add_special_tokens=False)
        word_ids = {w: array.array("i", e.ids).tobytes() for w, e in zip(unique, encodings)}
        return {c: b"".join([word_ids[w] for w in ws]) for c, ws in words.items()}

    @functools.cached_property
    def _decoder_tables(self):
        """id -> token and unicode char -> byte, built on the first decode."""
        return {i: t for t, i in self._rust.get_vocab().items()}, {c: b for b, c in bytes_to_unicode().items()}

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to text (special tokens and padding dropped)."""
        id_to_token, byte_decoder = self._decoder_tables
        tokens = [id_to_token[int(i)] for i in ids if int(i) not in (0, self.sot_token_id, self.eot_token_id)]
        words = "".join(tokens).split("</w>")
        decoded = (bytearray(byte_decoder[c] for c in w).decode("utf-8", errors="replace") for w in words)
        return " ".join(decoded).strip()

    def __call__(self, texts: Union[str, Sequence[str]], context_length: int = None, truncate: bool = True) -> torch.Tensor:
        """Token ids [N, context_length]: start token, BPE ids, end token, zero padding. A text
        longer than the context keeps its first ``context_length - 2`` ids and ends with the end
        token (``truncate=True``, what training wants), or raises (``truncate=False``)."""
        if isinstance(texts, str):
            texts = [texts]
        ctx = context_length or self.context_length
        flat, starts, ends = self._flat_ids(texts)
        lengths = ends - starts
        if not truncate and len(texts) and lengths.max() > ctx - 2:
            i = int(np.argmax(lengths > ctx - 2))
            shown = texts[i] if len(texts[i]) <= 60 else texts[i][:57] + "..."
            raise TextTooLongError(f"Input {shown!r} is too long for context length {ctx} "
                                   f"({lengths[i] + 2} tokens); pass truncate=True to cut it")
        kept = np.minimum(lengths, ctx - 2)  # truncate: keep the first ctx-2 ids
        result = np.zeros((len(texts), ctx), dtype=np.int64)
        result[:, 0] = self.sot_token_id
        columns = np.arange(ctx - 2)
        inside = columns[None, :] < kept[:, None]  # [N, ctx-2]
        result[:, 1 : ctx - 1][inside] = flat[(starts[:, None] + columns[None, :])[inside]]
        result[np.arange(len(texts)), kept + 1] = self.eot_token_id
        return torch.from_numpy(result)


@functools.lru_cache(maxsize=4)
def get_tokenizer(context_length: int = 77) -> Tokenizer:
    return Tokenizer(context_length=context_length)


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """OpenAI's ``clip.tokenize``: LongTensor [N, context_length]; a text that does not fit
    raises ``TextTooLongError`` (a RuntimeError) unless ``truncate=True``."""
    return get_tokenizer(context_length)(texts, truncate=truncate)
