"""OpenAI's caption cleaning (``ftfy.fix_text``, ``html.unescape`` twice, whitespace
collapse, lowercase), with exact shortcuts for text that ftfy provably leaves alone.

``ftfy.fix_text`` costs about 30 µs a caption; most captions need none of it. One
pass of ``ftfy.fix_and_explain`` runs these steps, and when none changes the text
the loop ends after that pass, returning the text unchanged:

================================  =============================================
step                              identity unless the text holds
================================  =============================================
unescape_html                     ``&``
fix_encoding                      a match of ``ftfy.badness.BADNESS_RE``
                                  (``is_bad``; ASCII text is never changed)
fix_c1_controls                   U+0080..U+009F
fix_latin_ligatures               a key of ``chardata.LIGATURES``
fix_character_width               a key of ``chardata.WIDTH_MAP``
uncurl_quotes                     a character of ``SINGLE/DOUBLE_QUOTE_RE``
fix_line_breaks                   ``\\r``, U+2028, U+2029, U+0085
fix_surrogates                    a surrogate
remove_terminal_escapes           ESC (``\\x1b``)
remove_control_chars              a key of ``chardata.CONTROL_CHARS``
normalize (NFC)                   text that is not already NFC
================================  =============================================

So text without any "trigger" character, already in NFC and with no BADNESS_RE match
is returned unchanged by ftfy. Text whose only triggers are curly quotes (common in
captions) is the other shortcut: see ``_fix_quotes_only``. ``fix_text`` also cuts text
at ``\\n`` and fixes each line separately (``BADNESS_RE`` has a ``^`` anchor), so text
with a newline always goes to ftfy. The trigger set is built from ftfy's own tables at
import; with an ftfy whose steps or defaults differ from the ones above, every
non-ASCII text goes through ftfy. ``tests/test_text_cleaning.py`` checks each fixer
against every code point outside the trigger set and fuzzes the shortcuts against
``ftfy.fix_text``.
"""
from __future__ import annotations

import html
import re
import unicodedata

import ftfy
import regex

try:  # the standard library's regex parser (``sre_parse`` before Python 3.11)
    import re._constants as _sre
    import re._parser as _sre_parse
except ImportError:  # pragma: no cover
    import sre_constants as _sre
    import sre_parse as _sre_parse

_WHITESPACE = regex.compile(r"\s+")
_NOT_PLAIN_ASCII = re.compile(r"[^\x20-\x7e\t\n\r]")

# The steps and defaults of ftfy 6.x that the shortcut relies on.
_EXPECTED_FIXERS = {
    "unescape_html", "remove_terminal_escapes", "restore_byte_a0", "replace_lossy_sequences",
    "decode_inconsistent_utf8", "fix_c1_controls", "fix_latin_ligatures", "fix_character_width",
    "uncurl_quotes", "fix_line_breaks", "fix_surrogates", "remove_control_chars",
}
_FIXED_TRIGGERS = "&\x1b\r\n\u2028\u2029\x85"
_MAX_SEGMENT = 1_000_000  # ftfy's max_decode_length: longer text is cut into segments


def _class_chars(pattern: "re.Pattern") -> str:
    """The characters of a one-class regex such as ``[\\x80-\\x9f]``, as a class body."""
    body = pattern.pattern
    if not (body.startswith("[") and body.endswith("]")) or body.startswith("[^"):
        raise ValueError(f"unexpected ftfy pattern {body!r}")
    return body[1:-1]


def _build_trigger_pattern():
    """A compiled class of every character some ftfy step may change, or None when this
    ftfy's steps are not the ones the shortcut was checked against."""
    try:
        from ftfy import FIXERS, TextFixerConfig, chardata, fixes
        from ftfy.badness import BADNESS_RE

        defaults = TextFixerConfig(explain=False)
        if (set(FIXERS) != _EXPECTED_FIXERS or defaults.unescape_html != "auto" or defaults.normalization != "NFC"
                or not all(getattr(defaults, f) for f in _EXPECTED_FIXERS - {"unescape_html"})
                or not defaults.fix_encoding):
            return None, None
        mapped = set(chardata.LIGATURES) | set(chardata.WIDTH_MAP) | set(chardata.CONTROL_CHARS)
        mapped_class = "".join(re.escape(chr(c)) for c in sorted(mapped))
        classes = [_class_chars(p) for p in (chardata.SINGLE_QUOTE_RE, chardata.DOUBLE_QUOTE_RE,
                                            chardata.C1_CONTROL_RE, fixes.SURROGATE_RE)]
        triggers = re.compile("[" + re.escape(_FIXED_TRIGGERS) + mapped_class + "".join(classes) + "]")
        return triggers, BADNESS_RE
    except (ImportError, AttributeError, ValueError, re.error):
        return None, None


def _element_chars(op, av):
    """Characters a regex element matches, when it is a plain literal or a positive class."""
    if op == _sre.LITERAL:
        return {av}
    if op == _sre.IN and all(o in (_sre.LITERAL, _sre.RANGE) for o, _ in av):
        return {c for o, a in av for c in ((a,) if o == _sre.LITERAL else range(a[0], a[1] + 1))}
    return None


def _build_badness_prefilter(badness_re):
    """``(key_chars, width)``: every match of ``badness_re`` holds a character of the
    compiled class ``key_chars`` and is at most ``width`` characters long, so ``is_bad``
    needs searching only near those characters. None when the pattern's shape (a top-level
    alternation of fixed sequences, no anchors but ``^``, no case folding) does not allow it."""
    try:
        parsed = _sre_parse.parse(badness_re.pattern, badness_re.flags)
        if badness_re.flags & re.IGNORECASE or len(parsed.data) != 1 or parsed.data[0][0] != _sre.BRANCH:
            return None
        keys = set()
        for alternative in parsed.data[0][1][1]:
            sets = []
            for op, av in alternative.data:
                if op == _sre.AT and av != _sre.AT_BEGINNING:
                    return None
                if op in (_sre.ASSERT, _sre.ASSERT_NOT, _sre.GROUPREF, _sre.GROUPREF_EXISTS):
                    return None
                chars = _element_chars(op, av)
                if chars is not None:
                    sets.append(chars)
            if not sets:
                return None
            # any one element per alternative is sound; pick the rarest-looking (no ASCII, fewest letters)
            keys |= min(sets, key=lambda chars: (min(chars) < 128, sum(chr(c).isalpha() for c in chars), len(chars)))
        width = parsed.getwidth()[1]
        key_class = "".join(re.escape(chr(c)) for c in sorted(keys))
        return re.compile(f"[{key_class}]"), width
    except Exception:  # any surprise in ftfy's pattern only turns the shortcut off
        return None


_FTFY_TRIGGERS, _BADNESS_RE = _build_trigger_pattern()
_BADNESS_PREFILTER = _build_badness_prefilter(_BADNESS_RE) if _BADNESS_RE is not None else None


def _looks_like_mojibake(text: str) -> bool:
    """``ftfy.badness.is_bad(text)``, searching only windows around the key characters."""
    if _BADNESS_PREFILTER is None:
        return bool(_BADNESS_RE.search(text))
    key_chars, width = _BADNESS_PREFILTER
    searched_to = 0
    for key in key_chars.finditer(text):
        start = max(key.start() - width + 1, searched_to)
        end = min(key.start() + width, len(text))
        # pos > 0 keeps '^' from matching at the window start (it only matches at 0)
        if _BADNESS_RE.search(text, start, end):
            return True
        searched_to = max(searched_to, end - width + 1)
    return False


def is_plain_ascii(text: str) -> bool:
    """Printable ASCII (plus tab/newline/CR) without '&': text that ftfy and html.unescape leave alone."""
    return text.isascii() and "&" not in text and (text.isprintable() or not _NOT_PLAIN_ASCII.search(text))


def ftfy_leaves_unchanged(text: str) -> bool:
    """True only if ``ftfy.fix_text(text) == text`` and ``html.unescape(text) == text``
    (False means "not known", not "changed")."""
    if text.isascii():  # ftfy never changes ASCII's encoding; only these steps can act on it
        return "&" not in text and "\r" not in text and not _NOT_PLAIN_ASCII.search(text)
    return (_FTFY_TRIGGERS is not None and len(text) < _MAX_SEGMENT
            and not _FTFY_TRIGGERS.search(text)
            and unicodedata.is_normalized("NFC", text)
            and not _looks_like_mojibake(text))


def _fix_quotes_only(text: str) -> "str | None":
    """``ftfy.fix_text(text)`` when curly quotes are the only thing it will change, else None.

    Let ``u = uncurl_quotes(text)`` (ftfy's own function). If ftfy provably leaves ``u``
    unchanged, ``text`` differs from ``u`` only in quote characters, so its only triggers
    are quotes: with no mojibake in ``text``, ftfy's first pass turns it into ``u`` (every
    other step is the identity there, ``u`` is NFC), and its second pass keeps ``u``."""
    if _FTFY_TRIGGERS is None or _looks_like_mojibake(text):
        return None
    uncurled = ftfy.fixes.uncurl_quotes(text)
    return uncurled if ftfy_leaves_unchanged(uncurled) else None


def clean_text(text: str) -> str:
    """OpenAI's basic_clean + whitespace_clean + lower()."""
    if is_plain_ascii(text) or ftfy_leaves_unchanged(text):
        # str.split's whitespace and the regex \s differ only on U+001C..U+001F, which
        # neither kind of text holds (they are ftfy triggers)
        return " ".join(text.split()).lower()
    fixed = _fix_quotes_only(text)
    if fixed is not None:  # as above: no trigger left, no '&' for html.unescape
        return " ".join(fixed.split()).lower()
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _WHITESPACE.sub(" ", text.strip()).strip().lower()
