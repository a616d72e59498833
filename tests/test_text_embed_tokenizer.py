"""The text_embed guest's tokenizer (guest_modules/text_embed/tokenizer.c), compiled natively and called through
ctypes, against Hugging Face ``tokenizers``' BertWordPieceTokenizer on the same vocab: the same ids, exactly.

Generated text draws from Unicode blocks whose characters all predate the Unicode version of the category tables
inside ``tokenizers`` (guest_modules/text_embed/README.md, "Known differences"): characters added or recategorised
since then are where the two are known to disagree.
"""

from __future__ import annotations

import ctypes
import random
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import BERT_CORPUS, TEXT_EMBED_SOURCE, NativeTokenizer, bert_tokenizer

OK, ERR_UTF8, ERR_NO_UNK, ERR_NO_CLS, ERR_NO_SEP = 0, 2, 4, 5, 6


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> NativeTokenizer:
    tokenizer = NativeTokenizer.build(tmp_path_factory.mktemp("tokenizer"))
    if tokenizer is None:
        pytest.skip("no native C compiler (gcc, cc or clang) to build tokenizer.c with")
    return tokenizer


@pytest.fixture(scope="module")
def vocab(native: NativeTokenizer, bert_vocab: Path) -> Iterator[ctypes.c_void_p]:
    code, _, handle = native.load(bert_vocab.read_bytes())
    assert code == OK
    yield handle
    native.free(handle)


@pytest.fixture(scope="module")
def reference(bert_vocab: Path) -> Any:
    return bert_tokenizer(bert_vocab)


def assert_same_ids(native: NativeTokenizer, vocab: ctypes.c_void_p, reference: Any, texts: list[str]) -> None:
    want = [e.ids for e in reference.encode_batch(texts)]
    for text, ids in zip(texts, want, strict=True):
        assert native.encode(vocab, text) == ids, (text, reference.encode(text).tokens)


HAND_WRITTEN = [
    "",
    "   \t\n ",
    "The quick brown fox jumps over the lazy dog.",
    # accents, in both cases, precomposed and decomposed
    "Café naïve über Ångström niño façade résumé São Paulo",
    "CAFÉ NAÏVE ÜBER ÅNGSTRÖM NIÑO FAÇADE RÉSUMÉ",
    "Cafe\u0301 A\u030angstro\u0308m n\u0303 \u1e9b\u0323 \u0340\u0341 \u0f73",
    "İstanbul ǅemal ǄEMAL Straße ΟΔΥΣΣΕΥΣ Ω K Å ﬁ ﬃ",
    # punctuation, ASCII and Unicode, glued to words and alone
    "«Bonjour» — dit-il… ¿Qué? ¡Sí! “quoted” ‘single’ „low“ ‹›",  # noqa: RUF001 (the point)
    "Hello,world!How are you?I'm fine.e-mail don't U.S.A. a/b\\c [x] {y} (z) #1 @me ~tilde ^caret `tick`",
    "!!!...???---___",
    "\u1fef\u037e\u00b7\u0387",
    # digits and numbers
    "3.14159, 2024-06-30, $1,299.99, 42%, ½ ² ٣ ५ ①",
    # CJK, Japanese, fullwidth, and the CJK extension boundaries of tokenizers' ranges
    "中文字符和汉字测试。我们喜欢自然语言处理！",  # noqa: RUF001 (fullwidth characters are the point)
    "日本語のテキスト、ひらがなとカタカナ（テスト）です。",  # noqa: RUF001
    "ＡＢＣ１２３！ｆｕｌｌｗｉｄｔｈ",  # noqa: RUF001
    "\U0002b81f\U0002b820\U0002b91f\U0002b920 \uf900\ufa6a \U0002f800\U0002fa1d",
    # emoji, alone and inside words
    "Emoji 😀 🎉 👍🏽 ❤️ 🇫🇷 party🎉time 👩‍👩‍👧",
    # Hangul: syllables, conjoining jamo, compatibility jamo, and a syllable word past 100 jamo
    "한국어 문장입니다. 안녕하세요, 세계!",
    "\u1112\u1161\u11ab\u1100\u116e\u11a8 ㅎㅏㄴ",
    "한" * 34,
    "한" * 33,
    # other scripts
    "Привет, мир! Как дела? Ελληνικά γράμματα. العربية لغة جميلة، أليس كذلك؟ עברית हिन्दी भाषा। ภาษาไทย",
    # control and format characters, and every kind of whitespace
    "a\x00b\x01c\x7fd\u200be\ufffdf\u0085g\x0bh\x0ci\u00adj\u200dk\ufeffl\U000e0001m",
    "one\ttwo\nthree\r\nfour\u00a0five\u3000six\u2028seven\u2029eight\u1680nine\u2009ten\u202feleven",
    "private \ue000\U000f0000 unassigned \u0378\U00050000 noncharacter \uffff",
    # canonical reordering of the marks strip_accents keeps
    "x\U0001d16dy\U0001d165z x\U0001d16d\U0001d165y \U0001d15f\U0001d16d\U0001d165",
    "a\u302f\u302eb a\U0001d16d\u0301\U0001d165b",
    # a dropped starter (U+0902, Mn of class 0) ends the run; a dropped non-starter (U+0334) does not
    "a\U0001d16d\u0902\U0001d165b a\U0001d16d\u0334\U0001d165b",
    # unknown words and characters
    "zyxwvut qqqqq xylophone ⌬⌬ 𓀀",
    # words around the 100-character limit, counted after normalization
    "a" * 100,
    "a" * 101,
    "é" * 100,
    "é" * 101,
    "e\u0301" * 101,
    "ab" * 50 + "!" + "c" * 101,
    # special tokens written in the text are tokens of their own; lowercase ones are not
    "foo[SEP]bar [MASK] [mask] [CLS][UNK] [PAD]x [SEP [[SEP]]",
    # truncation at 256 tokens, [CLS] and [SEP] included
    "word " * 300,
    "中" * 300,
    "tokenizing " * 127 + "the end",
    "tokenizing " * 126 + "the end",
    "!" * 255,
]


def test_hand_written_sentences_tokenize_exactly_as_tokenizers_does(
    native: NativeTokenizer, vocab: ctypes.c_void_p, reference: Any
) -> None:
    assert_same_ids(native, vocab, reference, HAND_WRITTEN)
    # The vocab holds realistic pieces: sentences of corpus words become words and "##" pieces, not [UNK]s.
    encoded = reference.encode("Tokenizing the café in Zürich!")
    assert any(t.startswith("##") for t in encoded.tokens)
    assert "[UNK]" not in encoded.tokens


def test_corpus_sentences_recombined_tokenize_exactly_as_tokenizers_does(
    native: NativeTokenizer, vocab: ctypes.c_void_p, reference: Any
) -> None:
    rng = random.Random(20240630)
    words = [w for line in BERT_CORPUS for w in line.split()]
    glue = [" ", " ", " ", "", ", ", "\t", "\n", " — ", "…", "-", "  ", "。", "'"]
    texts = []
    for _ in range(300):
        cases = (str.lower, str.upper, str.title, str)
        picked = [rng.choice(cases)(rng.choice(words)) for _ in range(rng.randint(1, 40))]
        texts.append("".join(w + rng.choice(glue) for w in picked))
    assert_same_ids(native, vocab, reference, texts)


#: Unicode blocks for generated text: scripts, marks, punctuation, symbols, CJK, Hangul, emoji, controls,
#: private use and unassigned code points. Two single code points are cut out: U+061D (Unicode 14) and
#: U+2E43.. (Unicode 10 onwards), punctuation that tokenizers' older tables do not know.
BLOCKS = [
    (0x0000, 0x036F),  # ASCII and C0/C1 controls, Latin-1, Latin Extended, IPA, combining diacritics
    (0x0370, 0x05FF),  # Greek, Cyrillic, Armenian, Hebrew
    (0x0600, 0x061C),  # Arabic (but U+061D)
    (0x061E, 0x06FF),
    (0x0900, 0x097F),  # Devanagari
    (0x0E00, 0x0E7F),  # Thai
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x1E00, 0x1FFF),  # Latin Extended Additional, Greek Extended
    (0x2000, 0x22FF),  # General Punctuation, super/subscripts, currency, letterlike, arrows, maths
    (0x2E00, 0x2E42),  # Supplemental Punctuation
    (0x3000, 0x30FF),  # CJK Symbols and Punctuation, Hiragana, Katakana
    (0x3130, 0x318F),  # Hangul Compatibility Jamo
    (0x4E00, 0x4EFF),  # CJK Unified Ideographs (a slice)
    (0xAC00, 0xACFF),  # Hangul Syllables (a slice)
    (0xE000, 0xE0FF),  # Private Use
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0xFB00, 0xFB4F),  # Alphabetic Presentation Forms
    (0xFE30, 0xFE4F),  # CJK Compatibility Forms
    (0xFF00, 0xFFFF),  # Halfwidth and Fullwidth Forms, Specials
    (0x1D100, 0x1D1FF),  # Musical Symbols (marks that canonical reordering moves)
    (0x1F300, 0x1F6FF),  # emoji
    (0x1F900, 0x1F9FF),
    (0x2B800, 0x2B93F),  # the CJK extension boundary of tokenizers' ranges
    (0x2F800, 0x2FA1F),  # CJK Compatibility Ideographs Supplement
    (0xE0000, 0xE007F),  # Tags (format characters)
    (0x50000, 0x500FF),  # unassigned
]
characters = st.one_of([st.integers(a, b) for a, b in BLOCKS]).map(chr)
words = st.one_of(
    st.sampled_from([w for line in BERT_CORPUS for w in line.split()]),
    st.text(characters, min_size=1, max_size=12),
)
separators = st.sampled_from([" ", "", "", "\t", "\n", "\u3000", ", ", "-"])
sentences = st.lists(st.tuples(words, separators), max_size=30).map(lambda ws: "".join(w + s for w, s in ws))


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sentences)
def test_generated_text_tokenizes_exactly_as_tokenizers_does(
    native: NativeTokenizer, vocab: ctypes.c_void_p, reference: Any, text: str
) -> None:
    assert native.encode(vocab, text) == reference.encode(text).ids


@pytest.mark.parametrize("max_ids", [2, 3, 10, 64])
def test_truncation_keeps_cls_and_sep_and_the_first_pieces(
    native: NativeTokenizer, vocab: ctypes.c_void_p, bert_vocab: Path, max_ids: int
) -> None:
    reference = bert_tokenizer(bert_vocab, max_length=max_ids)
    for text in ("", "word " * 100, "Tokenizing the café in Zürich! " * 10, "a" * 101 + " b"):
        got = native.encode(vocab, text, max_ids)
        assert got == reference.encode(text).ids
        assert len(got) <= max_ids
        assert (got[0], got[-1]) == (reference.token_to_id("[CLS]"), reference.token_to_id("[SEP]"))


def test_the_vocab_reader_gives_every_token_the_id_tokenizers_gives_it(
    native: NativeTokenizer, vocab: ctypes.c_void_p, reference: Any, bert_vocab: Path
) -> None:
    lines = bert_vocab.read_text().split("\n")[:-1]
    for line in lines:
        token = line.rstrip()
        assert native.token_id(vocab, token) == reference.token_to_id(token), token
    assert native.token_id(vocab, "the") == len(lines) - 3  # written twice: the later line wins
    assert native.token_id(vocab, "crlf") >= 0  # written "crlf\r"
    assert native.token_id(vocab, "trailing") >= 0  # written "trailing  "
    assert native.token_id(vocab, "no such token") == -1


@pytest.mark.parametrize(
    ("data", "code", "line"),
    [
        (b"[UNK]\n[CLS]\n[SEP]\n", OK, 0),
        (b"[UNK]\n[CLS]\n[SEP]", OK, 0),
        (b"[CLS]\n[SEP]\n", ERR_NO_UNK, 0),
        (b"[UNK]\n[SEP]\n", ERR_NO_CLS, 0),
        (b"[UNK]\n[CLS]\n", ERR_NO_SEP, 0),
        (b"", ERR_NO_UNK, 0),
        (b"[UNK]\n[CLS]\n[SEP]\nok\nbad\xff\n", ERR_UTF8, 5),
        (b"[unk]\n[CLS]\n[SEP]\n", ERR_NO_UNK, 0),
    ],
)
def test_vocab_files_tokenizers_refuses_are_refused(native: NativeTokenizer, data: bytes, code: int, line: int) -> None:
    got, at, handle = native.load(data)
    native.free(handle)
    assert (got, at) == (code, line)
    assert (handle.value is None) == (code != OK)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.one_of(st.binary(max_size=40), st.text(max_size=20).map(str.encode).map(lambda b: b + b"\xed\xa0\x80" + b)))
def test_invalid_utf8_is_found_where_python_finds_it(native: NativeTokenizer, data: bytes) -> None:
    try:
        data.decode("utf-8")
        want = -1
    except UnicodeDecodeError as exc:
        want = exc.start
    assert native.invalid_at(data) == want


def test_the_committed_unicode_tables_are_what_the_generator_writes() -> None:
    header = (TEXT_EMBED_SOURCE / "unicode_tables.h").read_text()
    if f'#define TK_UNICODE_VERSION "{unicodedata.unidata_version}"' not in header:
        pytest.skip(f"the tables are for another Unicode version than this Python's {unicodedata.unidata_version}")
    sys.path.insert(0, str(TEXT_EMBED_SOURCE))
    try:
        import gen_unicode  # guest_modules/text_embed/gen_unicode.py
    finally:
        sys.path.remove(str(TEXT_EMBED_SOURCE))
    assert gen_unicode.generate() == header
