/*
 * tokenizer.h - BERT uncased WordPiece tokenization, as Hugging Face `tokenizers`' BertWordPieceTokenizer(vocab,
 * lowercase=True) does it. Plain C11 with no WASI-NN and no wasmgate.h: it builds for wasm32-wasi and natively.
 *
 * The pipeline, for one UTF-8 sentence:
 *   1. special tokens: "[PAD]", "[UNK]", "[CLS]", "[SEP]" and "[MASK]" (those the vocab has) written in the raw
 *      text are tokens of their own, matched case-sensitively before any normalization;
 *   2. BertNormalizer: clean_text (drop U+0000, U+FFFD and categories Cc/Cf/Co/Cs except tab, newline and CR;
 *      White_Space to a space), handle_chinese_chars (a space either side of a CJK ideograph), strip_accents
 *      (NFD, then drop category Mn), lowercase;
 *   3. BertPreTokenizer: split on White_Space (removed) and on punctuation (ASCII punctuation and categories P*,
 *      each a word of its own);
 *   4. WordPiece: greedy longest match from the left, "##" before every piece but a word's first; a word with
 *      a part no vocab entry matches, or longer than 100 characters, is one [UNK];
 *   5. [CLS] pieces... [SEP], the pieces cut so that the whole is at most `max_ids` ids.
 * The Unicode data comes from unicode_tables.h (see gen_unicode.py for its version).
 *
 * Memory: the vocab holds a copy of the file, 8 bytes per line and a hash table of 2 to 4 slots of 4 bytes per
 * line; tk_encode allocates nothing and uses about 2 KiB of stack.
 */
#ifndef TK_TOKENIZER_H
#define TK_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

/** Words longer than this many characters (after normalization) are [UNK], as in `tokenizers`' WordPiece. */
#define TK_MAX_WORD_CHARS 100
/** Most tokens a vocab may hold; tk_vocab_load refuses more. */
#define TK_MAX_VOCAB_TOKENS (1u << 22)

typedef struct tk_vocab tk_vocab;

/** tk_vocab_load's results. */
enum {
    TK_OK = 0,
    TK_ERR_NOMEM = 1,     /* out of memory */
    TK_ERR_UTF8 = 2,      /* a line is not valid UTF-8 (its number, from 1, is in *line) */
    TK_ERR_TOO_MANY = 3,  /* more than TK_MAX_VOCAB_TOKENS lines */
    TK_ERR_NO_UNK = 4,    /* no "[UNK]" line */
    TK_ERR_NO_CLS = 5,    /* no "[CLS]" line */
    TK_ERR_NO_SEP = 6     /* no "[SEP]" line */
};

/**
 * Parse a BERT vocab.txt of `len` bytes (copied; the caller keeps `data`): one token per line, its id the line
 * number from 0. As `tokenizers` reads it: lines end at "\n", trailing White_Space (a "\r" included) is
 * trimmed, an empty line is a token too, and a token on two lines keeps the later id. It must hold [UNK],
 * [CLS] and [SEP]. Returns TK_OK and sets *out, or an error code (then *out is NULL); `line` (may be NULL)
 * receives the line of a TK_ERR_UTF8.
 */
int tk_vocab_load(const char *data, size_t len, tk_vocab **out, uint32_t *line);

/** Free a vocab (NULL is fine). */
void tk_vocab_free(tk_vocab *v);

/** The id of `token` (`len` bytes), or -1. */
int32_t tk_vocab_id(const tk_vocab *v, const char *token, size_t len);

/** Number of ids (lines) in the vocab. */
uint32_t tk_vocab_size(const tk_vocab *v);

/** The id the batch pads with: [PAD]'s, or 0 when the vocab has no [PAD]. */
int32_t tk_vocab_pad_id(const tk_vocab *v);

/** A short English description of a tk_vocab_load error code. */
const char *tk_error_text(int code);

/**
 * The byte offset of the first byte of `text` that does not start a valid UTF-8 sequence (overlong forms,
 * surrogates and code points past U+10FFFF are invalid, as Python's strict decoder has them), or -1 when all
 * `len` bytes are valid UTF-8.
 */
int64_t tk_utf8_invalid_at(const char *text, size_t len);

/**
 * Tokenize one sentence (`len` bytes of UTF-8) into `ids`: [CLS], its WordPiece ids, [SEP], at most `max_ids`
 * (>= 2) in all; the pieces past max_ids - 2 are dropped, as `tokenizers` truncates with
 * enable_truncation(max_ids). Returns the number of ids written, or -1 when the text is not valid UTF-8 (check
 * it with tk_utf8_invalid_at first) or max_ids < 2.
 */
int32_t tk_encode(const tk_vocab *v, const char *text, size_t len, int32_t *ids, uint32_t max_ids);

#endif /* TK_TOKENIZER_H */
