"""Write ``unicode_tables.h``: the Unicode data the text_embed tokenizer needs, from Python's ``unicodedata``.

Usage::

    python guest_modules/text_embed/gen_unicode.py           # rewrite unicode_tables.h next to this script
    python guest_modules/text_embed/gen_unicode.py --check   # exit 1 if the committed file differs

The guest has no ICU, so the BERT normalizer's Unicode steps run on these tables (see tokenizer.c for how):

- ``TK_SPACE``: White_Space (categories Zs, Zl, Zp, and U+0009..U+000D, U+0085: what Rust's
  ``char::is_whitespace`` and therefore Hugging Face ``tokenizers`` test);
- ``TK_CONTROL``: categories Cc, Cf, Co, Cs: what clean_text drops (the tokenizer keeps tab, newline and CR);
  unassigned code points (Cn) are kept, as ``tokenizers`` keeps them;
- ``TK_PUNCT``: categories Pc, Pd, Pe, Pf, Pi, Po, Ps (ASCII punctuation is tested in code);
- ``TK_MN``: category Mn, what strip_accents drops after NFD;
- ``TK_CCC``: canonical combining classes other than 0, for canonical reordering;
- ``TK_DECOMP_*``: each code point's full canonical decomposition (NFD of that one character, itself already
  reordered), except Hangul syllables, which the tokenizer decomposes algorithmically;
- ``TK_LOWER``: simple lowercase mappings as runs of equal delta.

Every table is sorted, for binary search. The output is deterministic: the same Python (Unicode version) gives
the same file byte for byte, which ``--check`` verifies.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "unicode_tables.h"
MAX_CP = 0x110000
HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3

SPACE_EXTRA = (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x85)


@functools.cache
def _categories() -> list[str]:
    """Every code point's general category, looked up once (each table below walks all of them)."""
    return [unicodedata.category(chr(cp)) for cp in range(MAX_CP)]


@functools.cache
def _combining_classes() -> bytes:
    return bytes(unicodedata.combining(chr(cp)) for cp in range(MAX_CP))


def _category(cp: int) -> str:
    return _categories()[cp]


def _ranges(pred: Callable[[int], bool]) -> list[tuple[int, int]]:
    """Maximal runs [first, last] of code points where ``pred`` holds."""
    out: list[tuple[int, int]] = []
    cp = 0
    for inside, group in itertools.groupby(pred(c) for c in range(MAX_CP)):
        n = sum(1 for _ in group)
        if inside:
            out.append((cp, cp + n - 1))
        cp += n
    return out


def is_space(cp: int) -> bool:
    return cp in SPACE_EXTRA or _category(cp) in ("Zs", "Zl", "Zp")


def is_control(cp: int) -> bool:
    return _category(cp) in ("Cc", "Cf", "Co", "Cs")


def is_punct(cp: int) -> bool:
    return _category(cp).startswith("P")


def is_mn(cp: int) -> bool:
    return _category(cp) == "Mn"


def ccc(cp: int) -> int:
    return _combining_classes()[cp]


@functools.cache
def _decompositions() -> dict[int, list[int]]:
    found = {}
    for cp in range(MAX_CP):
        # Only a canonical mapping (not "<compat> ...") can change a character under NFD; Hangul syllables have
        # none in the data (their decomposition is arithmetic), and surrogates cannot be normalized.
        mapping = unicodedata.decomposition(chr(cp))
        if mapping and not mapping.startswith("<"):
            found[cp] = [ord(c) for c in unicodedata.normalize("NFD", chr(cp))]
    return found


def decomposition(cp: int) -> list[int] | None:
    """The full canonical decomposition of one code point, or None when it is itself (or a Hangul syllable)."""
    return _decompositions().get(cp)


@functools.cache
def _lowercase() -> dict[int, int]:
    found = {}
    for cp in range(MAX_CP):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        low = chr(cp).lower()
        if low != chr(cp) and len(low) == 1:
            found[cp] = ord(low)
    return found


def lower(cp: int) -> int | None:
    """The simple lowercase mapping, or None when the character has none (or, U+0130 alone, a longer one)."""
    return _lowercase().get(cp)


def check_assumptions() -> None:
    """The tokenizer's shortcuts hold for this Unicode version; a failure here means tokenizer.c needs work."""
    multi = [cp for cp in range(MAX_CP) if not 0xD800 <= cp <= 0xDFFF and len(chr(cp).lower()) > 1]
    # U+0130 lowercases to "i" + U+0307; NFD turns it into "I" + U+0307 before the lowercase step ever sees it.
    assert multi == [0x130], multi
    assert decomposition(0x130) == [0x49, 0x307]
    for cp in range(MAX_CP):
        if ccc(cp):
            # A non-starter is never a word boundary, so a reordering run never spans two words, and lowercasing
            # a non-starter that survives strip_accents never happens (so reordering and lowercasing commute).
            assert not is_space(cp), hex(cp)
            assert not is_punct(cp), hex(cp)
            assert not is_control(cp), hex(cp)
            assert is_mn(cp) or lower(cp) is None, hex(cp)
    assert all(decomposition(cp) is None for cp in (HANGUL_FIRST, HANGUL_LAST, 0x41, 0x4E00))
    for cp, d in _decompositions().items():
        assert len(d) <= 4, hex(cp)  # TK_DECOMP_MAX
        # clean_text runs before NFD, and NFD never brings back what it removed or turned into a space (spaces
        # decompose only to spaces, U+2000 to U+2002 for one).
        assert is_space(cp) or not any(is_space(x) or is_control(x) for x in d), hex(cp)


def lower_runs() -> list[tuple[int, int, int, int]]:
    """(first, last, stride, delta): ``first, first+stride, ... last`` each lowercase to itself + delta; the
    code points in between map to themselves."""
    pairs = [(cp, low - cp) for cp, low in sorted(_lowercase().items())]
    runs: list[tuple[int, int, int, int]] = []
    i = 0
    while i < len(pairs):
        first, delta = pairs[i]
        # Try a run of stride 1, then of stride 2 (the alternating upper/lower blocks of Latin Extended).
        best = (first, first, 1, delta)
        for stride in (1, 2):
            j = i
            while j + 1 < len(pairs) and pairs[j + 1] == (pairs[j][0] + stride, delta):
                j += 1
            if j > i and pairs[j][0] > best[1]:
                best = (first, pairs[j][0], stride, delta)
        runs.append(best)
        i += (best[1] - best[0]) // best[2] + 1
    return runs


def _c_array(ctype: str, name: str, rows: Iterable[str], per_line: int) -> str:
    items = list(rows)
    lines = [", ".join(items[k : k + per_line]) for k in range(0, len(items), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[] = {{\n    {body}\n}};\n#define {name}_LEN {len(items)}u\n"


def _range_table(name: str, ranges: list[tuple[int, int]]) -> str:
    return _c_array("tk_range", name, (f"{{0x{a:X}, 0x{b:X}}}" for a, b in ranges), 6)


def generate() -> str:
    check_assumptions()
    version = unicodedata.unidata_version
    ccc_ranges: list[tuple[int, int, int]] = []
    for cp in range(MAX_CP):
        c = ccc(cp)
        if not c:
            continue
        if ccc_ranges and ccc_ranges[-1][1] == cp - 1 and ccc_ranges[-1][2] == c:
            ccc_ranges[-1] = (ccc_ranges[-1][0], cp, c)
        else:
            ccc_ranges.append((cp, cp, c))
    decomps = sorted(_decompositions().items())
    offsets, pool = [0], []
    for _, d in decomps:
        pool.extend(d)
        offsets.append(len(pool))
    assert len(pool) < 0x10000
    runs = lower_runs()
    kept = [cp for cp in range(MAX_CP) if ccc(cp) and not is_mn(cp)]
    kept_categories = sorted({_category(cp) for cp in kept})

    parts = [
        f"""/*
 * unicode_tables.h - Unicode data for the text_embed tokenizer. GENERATED: do not edit.
 *
 * Written by guest_modules/text_embed/gen_unicode.py from Python's unicodedata, Unicode {version}
 * (unicodedata.unidata_version). Regenerate with `python guest_modules/text_embed/gen_unicode.py`.
 *
 * Per-character NFD versus full-string NFD: TK_DECOMP holds each code point's decomposition on its own.
 * Full-string NFD also reorders combining marks across character boundaries (canonical ordering: each run of
 * non-starters is sorted by combining class). After strip_accents only the non-Mn non-starters of a run are
 * left ({len(kept)} code points in Unicode {version}, all {"/".join(kept_categories)}: Hangul tone marks, viramas,
 * musical symbol stems and flags). So per-character mapping differs from full-string NFD only where two of
 * those with different classes meet in one run, with no starter between them (not even one strip_accents
 * drops), as in U+1D16D U+1D165, which NFD orders U+1D165 U+1D16D. tokenizer.c applies that reordering itself
 * with TK_CCC, so its output equals full-string NFD's.
 */
#ifndef TK_UNICODE_TABLES_H
#define TK_UNICODE_TABLES_H

#include <stdint.h>

#define TK_UNICODE_VERSION "{version}"
/** Longest entry of TK_DECOMP (code points). */
#define TK_DECOMP_MAX 4

typedef struct tk_range {{
    uint32_t first, last;
}} tk_range;

typedef struct tk_ccc_range {{
    uint32_t first, last;
    uint8_t ccc;
}} tk_ccc_range;

typedef struct tk_lower_run {{
    uint32_t first, last;
    uint8_t stride;
    int32_t delta;
}} tk_lower_run;

""",
        "/* White_Space: Zs, Zl, Zp, U+0009..U+000D, U+0085. */\n",
        _range_table("TK_SPACE", _ranges(is_space)),
        "\n/* Cc, Cf, Co, Cs: removed by clean_text (except tab, newline and CR, which it turns into spaces). */\n",
        _range_table("TK_CONTROL", _ranges(is_control)),
        "\n/* Pc, Pd, Pe, Pf, Pi, Po, Ps: split off as words of their own. */\n",
        _range_table("TK_PUNCT", _ranges(is_punct)),
        "\n/* Mn: removed by strip_accents after NFD. */\n",
        _range_table("TK_MN", _ranges(is_mn)),
        "\n/* Canonical combining classes other than 0. */\n",
        _c_array("tk_ccc_range", "TK_CCC", (f"{{0x{a:X}, 0x{b:X}, {c}}}" for a, b, c in ccc_ranges), 5),
        "\n/* Full canonical decompositions: code point TK_DECOMP_CP[i] decomposes to\n"
        " * TK_DECOMP_POOL[TK_DECOMP_OFF[i] .. TK_DECOMP_OFF[i + 1]). */\n",
        _c_array("uint32_t", "TK_DECOMP_CP", (f"0x{cp:X}" for cp, _ in decomps), 10),
        _c_array("uint16_t", "TK_DECOMP_OFF", (str(o) for o in offsets), 14),
        _c_array("uint32_t", "TK_DECOMP_POOL", (f"0x{cp:X}" for cp in pool), 10),
        "\n/* Simple lowercase: first, first + stride, ..., last map to themselves + delta. */\n",
        _c_array("tk_lower_run", "TK_LOWER", (f"{{0x{a:X}, 0x{b:X}, {s}, {d}}}" for a, b, s, d in runs), 4),
        "\n#endif /* TK_UNICODE_TABLES_H */\n",
    ]
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file differs")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        if OUTPUT.read_text() != text:
            version = unicodedata.unidata_version
            print(f"{OUTPUT} is not what this Python (Unicode {version}) generates", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT} (Unicode {unicodedata.unidata_version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
