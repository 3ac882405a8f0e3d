/*
 * counter - forge/1 example plugin in C that uses the host functions.
 *
 *   incr(key) -> {"key":"<key>","count":N,"greeting":"<config greeting>","at_ns":T}
 *
 * Reads the count stored under <key> in KV bucket "counters" (absent = 0),
 * stores count+1 as decimal text, publishes the result JSON on
 * "events.counter.<key>", logs a line and returns the JSON. "greeting" is
 * the deployment's config value "greeting" ("hello" when unset); at_ns is
 * forge.now().
 *
 * Permissions (forge.json): log, clock, config, kv:counters,
 * publish:events.counter.*  - the operator must grant them, e.g.
 *   forgeone policy grant --plugin counter log clock config kv:counters 'publish:events.counter.*'
 *
 * The key must be 1-64 characters of A-Z a-z 0-9 _ - (one subject token, so
 * that the event subject stays inside the granted pattern); anything else is
 * rejected (REJECTED: retrying cannot help).
 *
 * Read-modify-write is not atomic: forge/1 has no compare-and-swap, so two
 * concurrent incr calls on one key may both store the same count.
 */
#define FORGE_IMPLEMENTATION
#include "forge.h"

#define BUCKET "counters"
#define SUBJECT_PREFIX "events.counter."
#define DEFAULT_GREETING "hello"
#define MAX_KEY 64

static int key_ok(const uint8_t *key, size_t len) {
    if (len == 0 || len > MAX_KEY) return 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = key[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '-';
        if (!ok) return 0;
    }
    return 1;
}

/* Decimal text -> count; 0 on success, -1 if not a number that fits. */
static int parse_count(const uint8_t *s, size_t len, uint64_t *out) {
    if (len == 0 || len > 20) return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Writes into buf, or only counts when buf is 0 (first pass: exact size). */
typedef struct {
    uint8_t *buf;
    size_t n;
} writer;

static void put(writer *w, const void *data, size_t len) {
    if (w->buf) forge_memcpy(w->buf + w->n, data, len);
    w->n += len;
}

static void put_str(writer *w, const char *s) { put(w, s, forge_strlen(s)); }

static void put_u64(writer *w, uint64_t v) {
    char tmp[20];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(w, tmp + i, sizeof tmp - i);
}

static void put_i64(writer *w, int64_t v) {
    if (v < 0) {
        put_str(w, "-");
        put_u64(w, (uint64_t)0 - (uint64_t)v);
    } else {
        put_u64(w, (uint64_t)v);
    }
}

/* A JSON string body: escapes quote, backslash and control bytes; other bytes
 * (UTF-8, as config values are) pass through. */
static void put_json_str(writer *w, const uint8_t *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    put_str(w, "\"");
    for (size_t i = 0; i < len; i++) {
        uint8_t c = s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            put(w, esc, 2);
        } else if (c < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(w, esc, 6);
        } else {
            put(w, &c, 1);
        }
    }
    put_str(w, "\"");
}

static void put_result(writer *w, const uint8_t *key, size_t key_len, uint64_t count,
                       const uint8_t *greeting, size_t greeting_len, int64_t at_ns) {
    put_str(w, "{\"key\":");
    put_json_str(w, key, key_len);
    put_str(w, ",\"count\":");
    put_u64(w, count);
    put_str(w, ",\"greeting\":");
    put_json_str(w, greeting, greeting_len);
    put_str(w, ",\"at_ns\":");
    put_i64(w, at_ns);
    put_str(w, "}");
}

/* set_error("counter: <what>: <HOST code>") and return empty. */
static forge_result_t fail_host(const char *what, int32_t code) {
    char msg[96];
    writer w = {(uint8_t *)msg, 0};
    put_str(&w, "counter: ");
    put_str(&w, what);
    put_str(&w, ": ");
    put_str(&w, forge_host_error_name(code));
    forge_set_error(msg, w.n);
    return FORGE_EMPTY;
}

FORGE_HANDLER(incr) {
    if (!key_ok(input, input_len))
        return forge_reject_str("counter: the key must be 1-64 characters of A-Z a-z 0-9 _ -");
    char key[MAX_KEY + 1];
    forge_memcpy(key, input, input_len);
    key[input_len] = 0;

    int64_t at_ns = forge_now();

    /* the greeting: config value, or the default when unset */
    forge_buf_t greeting = forge_config_get_str("greeting");
    if (greeting.err != FORGE_HOST_OK && greeting.err != FORGE_HOST_NOT_FOUND)
        return fail_host("config_get greeting", greeting.err);
    const uint8_t *greet = greeting.ptr;
    size_t greet_len = greeting.len;
    if (greeting.err == FORGE_HOST_NOT_FOUND) {
        greet = (const uint8_t *)DEFAULT_GREETING;
        greet_len = forge_strlen(DEFAULT_GREETING);
    }

    /* current count: absent = 0 */
    uint64_t count = 0;
    forge_buf_t stored = forge_kv_get_str(BUCKET, key);
    if (stored.err == FORGE_HOST_OK) {
        int bad = parse_count(stored.ptr, stored.len, &count);
        forge_buf_free(stored);
        if (bad) {
            forge_buf_free(greeting);
            return forge_fail("counter: the stored value is not a count");
        }
    } else if (stored.err != FORGE_HOST_NOT_FOUND) {
        forge_buf_free(greeting);
        return fail_host("kv_get", stored.err);
    }
    if (count == UINT64_MAX) {
        forge_buf_free(greeting);
        return forge_fail("counter: the count would overflow");
    }
    count++;

    /* store count+1 as decimal text */
    char text[20];
    writer tw = {(uint8_t *)text, 0};
    put_u64(&tw, count);
    int32_t rc = forge_kv_put_str(BUCKET, key, text, tw.n);
    if (rc != FORGE_HOST_OK) {
        forge_buf_free(greeting);
        return fail_host("kv_put", rc);
    }

    /* the result JSON, in a block of exactly its size (so dealloc frees it) */
    writer count_pass = {0, 0};
    put_result(&count_pass, input, input_len, count, greet, greet_len, at_ns);
    uint8_t *out = forge_alloc(count_pass.n);
    if (!out) {
        forge_buf_free(greeting);
        return forge_fail("counter: out of memory");
    }
    writer ow = {out, 0};
    put_result(&ow, input, input_len, count, greet, greet_len, at_ns);
    forge_buf_free(greeting);

    /* publish it on events.counter.<key> (fire-and-forget: the count is stored) */
    char subject[sizeof SUBJECT_PREFIX + MAX_KEY];
    writer sw = {(uint8_t *)subject, 0};
    put_str(&sw, SUBJECT_PREFIX);
    put_str(&sw, key);
    rc = forge_emit(subject, sw.n, out, ow.n);

    char line[sizeof subject + 64];
    writer lw = {(uint8_t *)line, 0};
    put_str(&lw, "counter: ");
    put_str(&lw, key);
    put_str(&lw, " -> ");
    put_u64(&lw, count);
    if (rc != FORGE_HOST_OK) {
        put_str(&lw, " (emit failed: ");
        put_str(&lw, forge_host_error_name(rc));
        put_str(&lw, ")");
    }
    forge_log(rc == FORGE_HOST_OK ? FORGE_LOG_INFO : FORGE_LOG_WARN, line, lw.n);

    return forge_result(out, ow.n);
}
