"""The shortcuts that skip ftfy are exact: they only fire where ftfy would change nothing
(or only uncurl quotes), checked against ftfy's own functions."""
import html
import random
import sys

import ftfy
import pytest
import regex
from ftfy.badness import is_bad
from hypothesis import given, settings
from hypothesis import strategies as st

from clipscratch import text_cleaning as tc

# ftfy's fix_text pass, in its order, apart from fix_encoding and NFC (tested separately)
CHARACTER_FIXERS = ["unescape_html", "fix_c1_controls", "fix_latin_ligatures", "fix_character_width", "uncurl_quotes",
                    "fix_line_breaks", "fix_surrogates", "remove_terminal_escapes", "remove_control_chars"]


def openai_clean(text: str) -> str:
    """OpenAI's basic_clean + whitespace_clean + lower(), as in clip/simple_tokenizer.py."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


def test_shortcut_is_active_with_this_ftfy():
    assert tc._FTFY_TRIGGERS is not None and tc._BADNESS_RE is not None
    key_chars, width = tc._BADNESS_PREFILTER
    assert width == 7 and key_chars.search("Ã©") and not key_chars.search("e é ü — 東京 😀")


def test_no_fixer_changes_any_code_point_outside_the_trigger_set():
    """Every code point ftfy's trigger class leaves out, in shuffled runs, passes each fixer unchanged."""
    safe = [chr(c) for c in range(sys.maxunicode + 1) if not tc._FTFY_TRIGGERS.match(chr(c))]
    assert len(safe) > 1_000_000
    rng = random.Random(0)
    for _ in range(2):
        rng.shuffle(safe)
        for start in range(0, len(safe), 4096):
            run = "".join(safe[start : start + 4096])
            for name in CHARACTER_FIXERS:
                assert ftfy.FIXERS[name](run) == run, name


def test_every_fixer_trigger_is_in_the_class():
    """The other direction, as a sanity check: single characters each fixer changes are triggers."""
    for c in range(sys.maxunicode + 1):
        ch = chr(c)
        if tc._FTFY_TRIGGERS.match(ch):
            continue
        assert all(ftfy.FIXERS[name](ch) == ch for name in ("fix_latin_ligatures", "fix_character_width",
                                                             "remove_control_chars", "uncurl_quotes", "fix_c1_controls"))


MOJIBAKE = ["Ã©tÃ©", "cafÃ©", "â€œquotedâ€\x9d", "The Mona Lisa doesnâ€™t have eyebrows.", "Ã\xa0 la carte",
            "Ã la mode", "Ð\x9fÑ€Ð¸Ð²ÐµÑ‚", "ГўВЂВњ", "вЂ™", "Ã¼ber", "Ãºnico", "×²", "√±", "Â£5", "schÃ¶n",
            "Ã", "Ã ", "Â", "Ã¢â‚¬Å“", "ÃƒÂ©", "Ø¯Ù„", "Î±Î²", "â€”", "l’été", "Œ1", "À°",
            "fish &amp; chips ’", "&lt;b&gt; é", "&#39;quoted&#39; 東京", "ﬁne “x”", "ｆｕｌｌ ’", "a\r\nb ’", "x\u2028y é",
            "e\u0301 accent", "“e\u0301”", "\x1b[31mred ’", "ctl\x07 é", "c1 \x85 é", "\u00a0Ã©"]


@pytest.mark.parametrize("text", MOJIBAKE)
def test_known_mojibake_is_never_skipped(text):
    assert tc._looks_like_mojibake(text) == is_bad(text)
    if ftfy.fix_text(text) != text:
        assert not tc.ftfy_leaves_unchanged(text)
        assert tc._fix_quotes_only(text) in (None, ftfy.fix_text(text))
    assert tc.clean_text(text) == openai_clean(text)


# Characters that make ftfy act: mojibake ingredients, quotes, ligatures, widths, controls,
# combining marks (NFC), plus ordinary letters, spaces and a few scripts.
_KEYS = "".join(sorted(set(tc._BADNESS_PREFILTER[0].pattern[1:-1].replace("\\", ""))))
ALPHABET = (_KEYS + "abcltgmpXYZ019 .,!?'\"&;<>#\n\r\t\x1b[\x00\x85\u2028ﬁﬂｆ　\u0301\u0308\u200b\u00a0"
            "éüñçàèöÉÜÀàáâãäåæßœŒøØ–—…’‘“”«»©®™°±²³µ·×÷€£¥¢¤¦¨¬¯¸ºªÂÃÎÐ東京😀МоскваΑβγ")


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=24))
def test_shortcuts_equal_ftfy_on_dense_random_text(text):
    fixed = ftfy.fix_text(text)
    assert tc._looks_like_mojibake(text) == is_bad(text)
    if tc.ftfy_leaves_unchanged(text):
        assert fixed == text and html.unescape(text) == text
    quotes_fixed = tc._fix_quotes_only(text)
    if quotes_fixed is not None:
        assert quotes_fixed == fixed
    assert tc.clean_text(text) == openai_clean(text)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_shortcuts_equal_ftfy_on_any_unicode(text):
    assert tc._looks_like_mojibake(text) == is_bad(text)
    if tc.ftfy_leaves_unchanged(text):
        assert ftfy.fix_text(text) == text
    assert tc.clean_text(text) == openai_clean(text)


def test_shortcuts_fire_on_typical_non_ascii_captions():
    """Not a speed test: the common non-ASCII captions really take the cheap paths."""
    for text in ["Café Müller — Zürich ©2019", "東京タワー 😀", "São Paulo, 25°C", "Москва", "½ price €20"]:
        assert tc.ftfy_leaves_unchanged(text), text
    for text in ["the dog’s toy", "“Summer” poster"]:
        assert not tc.ftfy_leaves_unchanged(text) and tc._fix_quotes_only(text) == ftfy.fix_text(text)
