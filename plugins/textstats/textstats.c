/*
 * textstats - forge/1 example plugin in C (no libc).
 *
 *   stats(text)         -> {"bytes":N,"words":N,"lines":N,"vowels":N}
 *   validate_json(text) -> {"valid":true}
 *                        | {"valid":false,"error":"...","offset":N}
 *
 * stats counts bytes; words are maximal runs of non-whitespace bytes (ASCII
 * space, \t, \n, \v, \f, \r separate words); lines is the number of '\n'
 * plus one if the input is non-empty and does not end in '\n'; vowels counts
 * ASCII a e i o u in either case.
 *
 * validate_json checks RFC 8259 syntax of one JSON text (whitespace around
 * it allowed), including UTF-8 validity inside strings, with arrays/objects
 * nested at most MAX_DEPTH (128) deep. offset is the byte offset where the
 * error was detected (the input length for a premature end; the opening
 * quote for an unterminated string; the first byte of a bad literal).
 */
#define FORGE_IMPLEMENTATION
#include "forge.h"

#define MAX_DEPTH 128

/* ---- output formatting -------------------------------------------------- */

typedef struct {
    char buf[160];
    size_t len;
} out_t;

static void put_str(out_t *o, const char *s) {
    while (*s && o->len < sizeof o->buf) o->buf[o->len++] = *s++;
}

static void put_u32(out_t *o, uint32_t v) {
    char tmp[10];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n && o->len < sizeof o->buf) o->buf[o->len++] = tmp[--n];
}

/* ---- stats --------------------------------------------------------------- */

static int is_space(uint8_t c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static int is_vowel(uint8_t c) {
    c |= 0x20; /* ASCII lower-case; non-letters never match below */
    return c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u';
}

FORGE_HANDLER(stats) {
    uint32_t words = 0, lines = 0, vowels = 0;
    int in_word = 0;
    for (size_t i = 0; i < input_len; i++) {
        uint8_t c = input[i];
        if (is_space(c)) {
            in_word = 0;
            if (c == '\n') lines++;
        } else {
            if (!in_word) words++;
            in_word = 1;
            vowels += (uint32_t)is_vowel(c);
        }
    }
    if (input_len > 0 && input[input_len - 1] != '\n') lines++;

    out_t o = {.len = 0};
    put_str(&o, "{\"bytes\":");
    put_u32(&o, (uint32_t)input_len);
    put_str(&o, ",\"words\":");
    put_u32(&o, words);
    put_str(&o, ",\"lines\":");
    put_u32(&o, lines);
    put_str(&o, ",\"vowels\":");
    put_u32(&o, vowels);
    put_str(&o, "}");
    return forge_output_copy(o.buf, o.len);
}

/* ---- validate_json ------------------------------------------------------- */

typedef struct {
    const uint8_t *s;
    size_t n;
    size_t pos;
    int depth;
    const char *err; /* plain ASCII, no quotes or backslashes */
    size_t err_at;
} parser_t;

static int fail(parser_t *p, const char *msg, size_t at) {
    p->err = msg;
    p->err_at = at;
    return 0;
}

static void skip_ws(parser_t *p) {
    while (p->pos < p->n) {
        uint8_t c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

static int is_hex(uint8_t c) {
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Validate one UTF-8 sequence starting at p->pos (first byte >= 0x80). */
static int utf8_seq(parser_t *p) {
    const uint8_t *s = p->s;
    size_t i = p->pos;
    uint8_t c = s[i];
    size_t need;
    uint8_t lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c >= 0xc2 && c <= 0xdf) {
        need = 1;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 2;
        if (c == 0xe0) lo = 0xa0;      /* no overlongs */
        else if (c == 0xed) hi = 0x9f; /* no UTF-16 surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 3;
        if (c == 0xf0) lo = 0x90;      /* no overlongs */
        else if (c == 0xf4) hi = 0x8f; /* <= U+10FFFF */
    } else {
        return fail(p, "invalid UTF-8", i);
    }
    if (p->n - i - 1 < need) return fail(p, "invalid UTF-8", i);
    if (s[i + 1] < lo || s[i + 1] > hi) return fail(p, "invalid UTF-8", i);
    for (size_t k = 2; k <= need; k++)
        if ((s[i + k] & 0xc0) != 0x80) return fail(p, "invalid UTF-8", i);
    p->pos = i + 1 + need;
    return 1;
}

static int parse_string(parser_t *p) {
    size_t start = p->pos;
    p->pos++; /* opening quote */
    for (;;) {
        if (p->pos >= p->n) return fail(p, "unterminated string", start);
        uint8_t c = p->s[p->pos];
        if (c == '"') {
            p->pos++;
            return 1;
        }
        if (c == '\\') {
            if (p->pos + 1 >= p->n) return fail(p, "unterminated string", start);
            uint8_t e = p->s[p->pos + 1];
            if (e == 'u') {
                if (p->n - p->pos < 6) return fail(p, "invalid unicode escape", p->pos);
                for (size_t k = 2; k < 6; k++)
                    if (!is_hex(p->s[p->pos + k])) return fail(p, "invalid unicode escape", p->pos);
                p->pos += 6;
            } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' ||
                       e == 'n' || e == 'r' || e == 't') {
                p->pos += 2;
            } else {
                return fail(p, "invalid escape", p->pos);
            }
        } else if (c < 0x20) {
            return fail(p, "control character in string", p->pos);
        } else if (c >= 0x80) {
            if (!utf8_seq(p)) return 0;
        } else {
            p->pos++;
        }
    }
}

static int parse_number(parser_t *p) {
    if (p->s[p->pos] == '-') p->pos++;
    if (p->pos >= p->n || !is_digit(p->s[p->pos])) return fail(p, "invalid number", p->pos);
    if (p->s[p->pos] == '0') {
        p->pos++;
    } else {
        while (p->pos < p->n && is_digit(p->s[p->pos])) p->pos++;
    }
    if (p->pos < p->n && p->s[p->pos] == '.') {
        p->pos++;
        if (p->pos >= p->n || !is_digit(p->s[p->pos])) return fail(p, "invalid number", p->pos);
        while (p->pos < p->n && is_digit(p->s[p->pos])) p->pos++;
    }
    if (p->pos < p->n && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->n && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        if (p->pos >= p->n || !is_digit(p->s[p->pos])) return fail(p, "invalid number", p->pos);
        while (p->pos < p->n && is_digit(p->s[p->pos])) p->pos++;
    }
    return 1;
}

static int parse_literal(parser_t *p, const char *word) {
    size_t start = p->pos;
    for (size_t k = 0; word[k]; k++) {
        if (p->pos >= p->n || p->s[p->pos] != (uint8_t)word[k]) return fail(p, "invalid literal", start);
        p->pos++;
    }
    return 1;
}

static int parse_value(parser_t *p);

/* Arrays and objects: `close` is ']' or '}'. */
static int parse_container(parser_t *p, uint8_t close) {
    int is_object = close == '}';
    if (++p->depth > MAX_DEPTH) return fail(p, "nesting too deep", p->pos);
    p->pos++; /* '[' or '{' */
    skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == close) {
        p->pos++;
        p->depth--;
        return 1;
    }
    for (;;) {
        if (is_object) {
            skip_ws(p);
            if (p->pos >= p->n) return fail(p, "unexpected end of input", p->pos);
            if (p->s[p->pos] != '"') return fail(p, "expected string key", p->pos);
            if (!parse_string(p)) return 0;
            skip_ws(p);
            if (p->pos >= p->n) return fail(p, "unexpected end of input", p->pos);
            if (p->s[p->pos] != ':') return fail(p, "expected ':'", p->pos);
            p->pos++;
        }
        if (!parse_value(p)) return 0;
        skip_ws(p);
        if (p->pos >= p->n) return fail(p, "unexpected end of input", p->pos);
        uint8_t c = p->s[p->pos];
        if (c == ',') {
            p->pos++;
            continue;
        }
        if (c == close) {
            p->pos++;
            p->depth--;
            return 1;
        }
        return fail(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'", p->pos);
    }
}

static int parse_value(parser_t *p) {
    skip_ws(p);
    if (p->pos >= p->n) return fail(p, "unexpected end of input", p->pos);
    uint8_t c = p->s[p->pos];
    switch (c) {
    case '{': return parse_container(p, '}');
    case '[': return parse_container(p, ']');
    case '"': return parse_string(p);
    case 't': return parse_literal(p, "true");
    case 'f': return parse_literal(p, "false");
    case 'n': return parse_literal(p, "null");
    default:
        if (c == '-' || is_digit(c)) return parse_number(p);
        return fail(p, "unexpected character", p->pos);
    }
}

FORGE_HANDLER(validate_json) {
    parser_t p = {.s = input, .n = input_len, .pos = 0, .depth = 0, .err = 0, .err_at = 0};
    if (parse_value(&p)) {
        skip_ws(&p);
        if (p.pos < p.n) fail(&p, "unexpected data after JSON value", p.pos);
    }

    out_t o = {.len = 0};
    if (!p.err) {
        put_str(&o, "{\"valid\":true}");
    } else {
        put_str(&o, "{\"valid\":false,\"error\":\"");
        put_str(&o, p.err);
        put_str(&o, "\",\"offset\":");
        put_u32(&o, (uint32_t)p.err_at);
        put_str(&o, "}");
    }
    return forge_output_copy(o.buf, o.len);
}
