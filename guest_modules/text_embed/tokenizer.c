/*
 * tokenizer.c - BERT uncased WordPiece tokenization (see tokenizer.h for the pipeline and its contract).
 *
 * One pass over the sentence, one character at a time, with no allocation: each raw character goes through
 * clean_text, the CJK padding, NFD, strip_accents and lowercase, and what comes out goes straight to the
 * pre-tokenizer, which collects the current word (at most TK_MAX_WORD_CHARS characters; a longer one is only
 * counted) and hands each finished word to WordPiece. Tokenizing stops as soon as the output is full.
 *
 * Where this follows `tokenizers` rather than BERT's original Python tokenizer: the CJK ranges are those of
 * its Rust BertNormalizer (U+2B920.., not U+2B820..); unassigned code points (Cn) are kept, not dropped as
 * control characters; VT and FF are control characters (dropped), not spaces; and special tokens written in
 * the text are tokens (see tokenizer.h).
 */
#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>

#include "unicode_tables.h"

#define N_SPECIAL 5

struct tk_vocab {
    char *text;          /* a copy of the file; every token is a slice of it */
    uint32_t *tok_off;   /* per id: where its token starts in text */
    uint32_t *tok_len;   /* per id: its length in bytes */
    uint32_t n;          /* ids (lines) */
    uint32_t *slots;     /* open addressing: id + 1 of the token hashed there, 0 when empty */
    uint32_t mask;       /* slots - 1 (a power of two at least twice the number of lines) */
    int32_t unk, cls, sep, pad;
    int32_t special_id[N_SPECIAL]; /* -1 when the vocab lacks it */
};

static const char *const SPECIAL[N_SPECIAL] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};

/* ======================================================================================================
 * UTF-8
 * ====================================================================================================== */

int64_t tk_utf8_invalid_at(const char *text, size_t len) {
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned char lo = 0x80, hi = 0xBF; /* the range allowed for the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            n = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            if (c == 0xE0) lo = 0xA0;      /* overlong */
            else if (c == 0xED) hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            if (c == 0xF0) lo = 0x90;      /* overlong */
            else if (c == 0xF4) hi = 0x8F; /* past U+10FFFF */
        } else {
            return (int64_t)i;
        }
        if (len - i < n || s[i + 1] < lo || s[i + 1] > hi) return (int64_t)i;
        for (size_t k = 2; k < n; k++)
            if ((s[i + k] & 0xC0) != 0x80) return (int64_t)i;
        i += n;
    }
    return -1;
}

/* The code point at s[*i] (valid UTF-8), advancing *i past it. */
static uint32_t utf8_next(const unsigned char *s, size_t *i) {
    uint32_t c = s[*i];
    if (c < 0x80) {
        *i += 1;
        return c;
    }
    if (c < 0xE0) {
        c = ((c & 0x1F) << 6) | (s[*i + 1] & 0x3Fu);
        *i += 2;
    } else if (c < 0xF0) {
        c = ((c & 0x0F) << 12) | ((s[*i + 1] & 0x3Fu) << 6) | (s[*i + 2] & 0x3Fu);
        *i += 3;
    } else {
        c = ((c & 0x07) << 18) | ((s[*i + 1] & 0x3Fu) << 12) | ((s[*i + 2] & 0x3Fu) << 6) | (s[*i + 3] & 0x3Fu);
        *i += 4;
    }
    return c;
}

static size_t utf8_put(uint32_t cp, unsigned char *out) {
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ======================================================================================================
 * Character properties (unicode_tables.h, with ASCII fast paths)
 * ====================================================================================================== */

/* Whether cp lies in one of the n sorted, disjoint ranges. */
static int in_ranges(const tk_range *r, uint32_t n, uint32_t cp) {
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (r[mid].last < cp) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && r[lo].first <= cp;
}

static int is_space(uint32_t cp) {
    if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
    return in_ranges(TK_SPACE, TK_SPACE_LEN, cp);
}

/* What clean_text drops besides U+0000 and U+FFFD: Cc, Cf, Co, Cs, except tab, newline and CR. */
static int is_control(uint32_t cp) {
    if (cp == '\t' || cp == '\n' || cp == '\r') return 0;
    if (cp < 0x80) return cp < 0x20 || cp == 0x7F;
    return in_ranges(TK_CONTROL, TK_CONTROL_LEN, cp);
}

/* Rust's char::is_ascii_punctuation, or a category P* character. */
static int is_punct(uint32_t cp) {
    if (cp < 0x80)
        return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) || (cp >= 0x5B && cp <= 0x60) ||
               (cp >= 0x7B && cp <= 0x7E);
    return in_ranges(TK_PUNCT, TK_PUNCT_LEN, cp);
}

/* The CJK ideograph ranges of `tokenizers`' BertNormalizer (is_chinese_char). */
static int is_cjk(uint32_t cp) {
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
           (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) ||
           (cp >= 0x2B920 && cp <= 0x2CEAF) || (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

static int is_mn(uint32_t cp) { return cp >= 0x300 && in_ranges(TK_MN, TK_MN_LEN, cp); }

/* Canonical combining class. */
static uint8_t ccc_of(uint32_t cp) {
    if (cp < 0x300) return 0;
    uint32_t lo = 0, hi = TK_CCC_LEN;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (TK_CCC[mid].last < cp) lo = mid + 1;
        else hi = mid;
    }
    return lo < TK_CCC_LEN && TK_CCC[lo].first <= cp ? TK_CCC[lo].ccc : 0;
}

/* The full canonical decomposition of cp into out (at most TK_DECOMP_MAX); returns its length. */
static uint32_t decompose(uint32_t cp, uint32_t out[TK_DECOMP_MAX]) {
    /* Hangul syllables: L V or L V T, computed (Unicode's "Hangul Syllable Decomposition"). */
    if (cp >= 0xAC00 && cp <= 0xD7A3) {
        uint32_t s = cp - 0xAC00, t = s % 28;
        out[0] = 0x1100 + s / 588;
        out[1] = 0x1161 + (s % 588) / 28;
        if (!t) return 2;
        out[2] = 0x11A7 + t;
        return 3;
    }
    if (cp >= 0xC0) {
        uint32_t lo = 0, hi = TK_DECOMP_CP_LEN;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (TK_DECOMP_CP[mid] < cp) lo = mid + 1;
            else hi = mid;
        }
        if (lo < TK_DECOMP_CP_LEN && TK_DECOMP_CP[lo] == cp) {
            uint32_t n = (uint32_t)(TK_DECOMP_OFF[lo + 1] - TK_DECOMP_OFF[lo]);
            memcpy(out, TK_DECOMP_POOL + TK_DECOMP_OFF[lo], n * sizeof *out);
            return n;
        }
    }
    out[0] = cp;
    return 1;
}

static uint32_t lower(uint32_t cp) {
    if (cp < 0x80) return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
    uint32_t lo = 0, hi = TK_LOWER_LEN;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (TK_LOWER[mid].last < cp) lo = mid + 1;
        else hi = mid;
    }
    if (lo < TK_LOWER_LEN && TK_LOWER[lo].first <= cp && (cp - TK_LOWER[lo].first) % TK_LOWER[lo].stride == 0)
        return (uint32_t)((int32_t)cp + TK_LOWER[lo].delta);
    return cp;
}

/* ======================================================================================================
 * The vocab: a copy of the file and an open-addressing hash table over its lines
 * ====================================================================================================== */

/* FNV-1a over `prefix` ("##" or nothing) then `s`. */
static uint32_t hash_bytes(int prefix, const unsigned char *s, size_t n) {
    uint32_t h = 2166136261u;
    if (prefix) h = ((h ^ '#') * 16777619u ^ '#') * 16777619u;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 16777619u;
    return h;
}

static int token_is(const tk_vocab *v, uint32_t id, int prefix, const unsigned char *s, size_t n) {
    const char *t = v->text + v->tok_off[id];
    size_t tl = v->tok_len[id], p = prefix ? 2 : 0;
    return tl == n + p && (!prefix || (t[0] == '#' && t[1] == '#')) && memcmp(t + p, s, n) == 0;
}

/* The slot holding the token ("##" if prefix, then s), or the empty slot where it would go. */
static uint32_t find_slot(const tk_vocab *v, int prefix, const unsigned char *s, size_t n) {
    uint32_t i = hash_bytes(prefix, s, n) & v->mask;
    while (v->slots[i] && !token_is(v, v->slots[i] - 1, prefix, s, n)) i = (i + 1) & v->mask;
    return i;
}

static int32_t lookup(const tk_vocab *v, int prefix, const unsigned char *s, size_t n) {
    uint32_t slot = v->slots[find_slot(v, prefix, s, n)];
    return slot ? (int32_t)(slot - 1) : -1;
}

int32_t tk_vocab_id(const tk_vocab *v, const char *token, size_t len) {
    return lookup(v, 0, (const unsigned char *)token, len);
}

uint32_t tk_vocab_size(const tk_vocab *v) { return v->n; }

int32_t tk_vocab_pad_id(const tk_vocab *v) { return v->pad >= 0 ? v->pad : 0; }

void tk_vocab_free(tk_vocab *v) {
    if (!v) return;
    free(v->text);
    free(v->tok_off);
    free(v->tok_len);
    free(v->slots);
    free(v);
}

const char *tk_error_text(int code) {
    switch (code) {
    case TK_OK: return "no error";
    case TK_ERR_NOMEM: return "out of memory";
    case TK_ERR_UTF8: return "a line is not valid UTF-8";
    case TK_ERR_TOO_MANY: return "more than 4194304 tokens";
    case TK_ERR_NO_UNK: return "no [UNK] token";
    case TK_ERR_NO_CLS: return "no [CLS] token";
    case TK_ERR_NO_SEP: return "no [SEP] token";
    default: return "unknown error";
    }
}

/* The length of line [s, s+n) without its trailing White_Space (Rust's str::trim_end). Valid UTF-8. */
static size_t trim_end(const unsigned char *s, size_t n) {
    size_t keep = 0, i = 0;
    while (i < n) {
        uint32_t cp = utf8_next(s, &i);
        if (!is_space(cp)) keep = i;
    }
    return keep;
}

int tk_vocab_load(const char *data, size_t len, tk_vocab **out, uint32_t *line) {
    *out = NULL;
    if (line) *line = 0;
    /* Lines as Rust's BufRead::lines() gives them: split at "\n", and a final "\n" ends the last line. */
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += data[i] == '\n';
    if (len && data[len - 1] != '\n') lines++;
    if (lines > TK_MAX_VOCAB_TOKENS) return TK_ERR_TOO_MANY;

    tk_vocab *v = (tk_vocab *)calloc(1, sizeof *v);
    if (!v) return TK_ERR_NOMEM;
    uint32_t cap = 16;
    while (cap < 2 * lines) cap *= 2;
    v->text = (char *)malloc(len ? len : 1);
    v->tok_off = (uint32_t *)malloc((lines ? lines : 1) * sizeof *v->tok_off);
    v->tok_len = (uint32_t *)malloc((lines ? lines : 1) * sizeof *v->tok_len);
    v->slots = (uint32_t *)calloc(cap, sizeof *v->slots);
    if (!v->text || !v->tok_off || !v->tok_len || !v->slots) {
        tk_vocab_free(v);
        return TK_ERR_NOMEM;
    }
    if (len) memcpy(v->text, data, len);
    v->mask = cap - 1;

    const unsigned char *s = (const unsigned char *)v->text;
    size_t start = 0;
    for (uint32_t id = 0; id < lines; id++) {
        size_t end = start;
        while (end < len && s[end] != '\n') end++;
        size_t next = end < len ? end + 1 : end;
        if (tk_utf8_invalid_at(v->text + start, end - start) >= 0) {
            if (line) *line = id + 1;
            tk_vocab_free(v);
            return TK_ERR_UTF8;
        }
        size_t n = trim_end(s + start, end - start);
        v->tok_off[id] = (uint32_t)start;
        v->tok_len[id] = (uint32_t)n;
        v->n = id + 1;
        /* A token seen before takes the later id, as a HashMap insert does. */
        v->slots[find_slot(v, 0, s + start, n)] = id + 1;
        start = next;
    }
    for (int k = 0; k < N_SPECIAL; k++) v->special_id[k] = tk_vocab_id(v, SPECIAL[k], strlen(SPECIAL[k]));
    v->pad = v->special_id[0];
    v->unk = v->special_id[1];
    v->cls = v->special_id[2];
    v->sep = v->special_id[3];
    int err = v->unk < 0 ? TK_ERR_NO_UNK : v->cls < 0 ? TK_ERR_NO_CLS : v->sep < 0 ? TK_ERR_NO_SEP : TK_OK;
    if (err) {
        tk_vocab_free(v);
        return err;
    }
    *out = v;
    return TK_OK;
}

/* ======================================================================================================
 * Encoding
 * ====================================================================================================== */

typedef struct encoder {
    const tk_vocab *v;
    int32_t *ids;
    uint32_t n_ids;
    uint32_t room;   /* ids available before [SEP]: max_ids - 1 */
    uint32_t word[TK_MAX_WORD_CHARS];
    uint8_t word_ccc[TK_MAX_WORD_CHARS];
    uint32_t word_len;  /* characters in the word so far; past TK_MAX_WORD_CHARS they are only counted */
    uint32_t run_start; /* no non-starter moves before this: a starter strip_accents dropped was there */
} encoder;

static int full(const encoder *e) { return e->n_ids >= e->room; }

static void push(encoder *e, int32_t id) {
    if (!full(e)) e->ids[e->n_ids++] = id;
}

/* WordPiece over word[0..n): greedy longest match, "##" before every piece but the first; one [UNK] for the
 * whole word when some part matches nothing. */
static void wordpiece(encoder *e, const uint32_t *word, uint32_t n) {
    unsigned char bytes[TK_MAX_WORD_CHARS * 4];
    uint32_t at[TK_MAX_WORD_CHARS + 1]; /* byte offset of each character */
    int32_t pieces[TK_MAX_WORD_CHARS];
    uint32_t n_pieces = 0;
    at[0] = 0;
    for (uint32_t i = 0; i < n; i++) at[i + 1] = at[i] + (uint32_t)utf8_put(word[i], bytes + at[i]);
    uint32_t start = 0;
    while (start < n) {
        uint32_t end = n;
        int32_t id = -1;
        for (; end > start; end--) {
            id = lookup(e->v, start > 0, bytes + at[start], at[end] - at[start]);
            if (id >= 0) break;
        }
        if (id < 0) {
            push(e, e->v->unk);
            return;
        }
        pieces[n_pieces++] = id;
        start = end;
    }
    for (uint32_t i = 0; i < n_pieces; i++) push(e, pieces[i]);
}

static void end_word(encoder *e) {
    if (e->word_len > TK_MAX_WORD_CHARS) push(e, e->v->unk);
    else if (e->word_len) wordpiece(e, e->word, e->word_len);
    e->word_len = e->run_start = 0;
}

/* A normalized character into the pre-tokenizer: White_Space ends the word; punctuation is a word of its own;
 * anything else joins the word, a non-starter (ccc > 0) sorted into its run by combining class (stable), as
 * full-string NFD orders it. */
static void pre_tokenize(encoder *e, uint32_t cp, uint8_t ccc) {
    if (is_space(cp)) {
        end_word(e);
        return;
    }
    if (is_punct(cp)) {
        end_word(e);
        wordpiece(e, &cp, 1);
        return;
    }
    uint32_t n = e->word_len++;
    if (n >= TK_MAX_WORD_CHARS) return; /* too long: it will be [UNK] */
    /* The run ends at a starter: one kept in the word (class 0) stops the search by itself, one that
     * strip_accents dropped is remembered in run_start. */
    uint32_t at = n;
    if (ccc)
        while (at > e->run_start && e->word_ccc[at - 1] > ccc) at--;
    memmove(e->word + at + 1, e->word + at, (n - at) * sizeof *e->word);
    memmove(e->word_ccc + at + 1, e->word_ccc + at, n - at);
    e->word[at] = cp;
    e->word_ccc[at] = ccc;
}

/* One raw character through BertNormalizer: clean_text, handle_chinese_chars, strip_accents, lowercase. */
static void normalize(encoder *e, uint32_t cp) {
    if (cp == 0 || cp == 0xFFFD || is_control(cp)) return;
    if (is_space(cp)) {
        end_word(e);
        return;
    }
    int cjk = is_cjk(cp);
    if (cjk) end_word(e);
    uint32_t parts[TK_DECOMP_MAX];
    uint32_t n = decompose(cp, parts);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t ccc = ccc_of(parts[i]);
        if (is_mn(parts[i])) {
            /* Dropped, but a starter among them still ends the reordering run. */
            if (!ccc && e->word_len <= TK_MAX_WORD_CHARS) e->run_start = e->word_len;
            continue;
        }
        pre_tokenize(e, lower(parts[i]), ccc);
    }
    if (cjk) end_word(e);
}

/* The special token written at text[i..], or -1. */
static int special_at(const tk_vocab *v, const char *text, size_t len, size_t i) {
    for (int k = 0; k < N_SPECIAL; k++) {
        size_t n = strlen(SPECIAL[k]);
        if (v->special_id[k] >= 0 && len - i >= n && memcmp(text + i, SPECIAL[k], n) == 0) return k;
    }
    return -1;
}

int32_t tk_encode(const tk_vocab *v, const char *text, size_t len, int32_t *ids, uint32_t max_ids) {
    if (max_ids < 2 || tk_utf8_invalid_at(text, len) >= 0) return -1;
    encoder e;
    e.v = v;
    e.ids = ids;
    e.n_ids = 0;
    e.room = max_ids - 1;
    e.word_len = e.run_start = 0;
    push(&e, v->cls);
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < len && !full(&e)) {
        if (s[i] == '[') {
            int k = special_at(v, text, len, i);
            if (k >= 0) {
                end_word(&e);
                push(&e, v->special_id[k]);
                i += strlen(SPECIAL[k]);
                continue;
            }
        }
        normalize(&e, utf8_next(s, &i));
    }
    end_word(&e);
    ids[e.n_ids++] = v->sep;
    return (int32_t)e.n_ids;
}
