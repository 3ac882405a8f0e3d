/*
 * forge.h - C header for ForgeOne plugins, ABI "forge/1".
 *
 * The contract is documented in docs/abi.md. Build a plugin with, e.g.:
 *
 *   python -m ziglang cc -target wasm32-freestanding \
 *       -mcpu=mvp+bulk_memory+bulk_memory_opt+sign_ext+nontrapping_fptoint+mutable_globals+multivalue \
 *       -O2 -nostdlib -Wl,--no-entry -Wl,-z,stack-size=65536 \
 *       -I plugins/include -o plugin.wasm plugin.c
 *
 * Usage: in exactly ONE .c file of the plugin write
 *
 *   #define FORGE_IMPLEMENTATION
 *   #include "forge.h"
 *
 * which defines the heap allocator and exports `alloc` and `dealloc`.
 * Define FORGE_NO_ALLOC_EXPORTS as well if you export your own pair.
 * Other .c files just include the header.
 *
 * Declare handlers with FORGE_HANDLER(name); each is exported as `name` with
 * the wasm type (i32, i32) -> i64:
 *
 *   FORGE_HANDLER(echo) { return forge_output_copy(input, input_len); }
 *
 * Host functions are declared below. Only those a plugin actually calls
 * become imports of its module, and each one except set_error, reject,
 * event_subject and event_header needs a permission in forge.json that the
 * operator's policy grants (docs/abi.md section 3; a call without the grant
 * fails the whole call with DENIED). Functions that return data (config_get,
 * kv_get, call, event_subject, event_header) put it in a block the host
 * obtained from this module's own `alloc`; the plugin owns it and should
 * release it (forge_buf_free) when done.
 */
#ifndef FORGE_H
#define FORGE_H

#include <stddef.h>
#include <stdint.h>

#if !defined(__wasm32__)
#error "forge.h: plugins must be compiled for wasm32 (e.g. -target wasm32-freestanding)"
#endif

/* ---- ABI version ------------------------------------------------------- */

#define FORGE_ABI "forge/1" /* the value of "abi" in forge.json */
#define FORGE_ABI_VERSION 1

/* ---- attributes -------------------------------------------------------- */

/* Export a function from the module under `name` (a string literal). */
#define FORGE_EXPORT(name) __attribute__((export_name(name), used, visibility("default")))

/* Import a host function `forge.<name>`. (A module may also import WASI
 * preview 1 functions, module "wasi_snapshot_preview1"; no other module.) */
#define FORGE_IMPORT(name) __attribute__((import_module("forge"), import_name(name)))

/* Packed handler result: (out_ptr << 32) | out_len. 0 = empty output. */
typedef uint64_t forge_result_t;

/*
 * Define an exported handler. The body sees `input` (the call's input
 * bytes, owned by the plugin for the duration of the call) and `input_len`,
 * and returns a forge_result_t. The C symbol is forge_handler_<name>, so a
 * handler name cannot clash with a C library name.
 */
#define FORGE_HANDLER(name)                                                     \
    FORGE_EXPORT(#name)                                                         \
    forge_result_t forge_handler_##name(const uint8_t *input, size_t input_len)

/* ---- host imports (module "forge") -------------------------------------- */

enum {
    FORGE_LOG_DEBUG = 0,
    FORGE_LOG_INFO = 1,
    FORGE_LOG_WARN = 2,
    FORGE_LOG_ERROR = 3,
};

/*
 * Results host functions return when they cannot do what was asked
 * (schemas/abi.py HOST_*). i32 results are 0 on success; i64 results are a
 * packed block (see forge_unpack below) on success.
 */
#define FORGE_HOST_OK 0
#define FORGE_HOST_NOT_FOUND (-1) /* no such key / config entry / plugin, function or event */
#define FORGE_HOST_DENIED (-2)    /* the called plugin refused (call only) */
#define FORGE_HOST_FAILED (-3)    /* the bus or the called plugin failed */
#define FORGE_HOST_TIMEOUT (-4)   /* the call's remaining deadline ran out while waiting */
#define FORGE_HOST_TOO_LARGE (-5) /* over a size cap, or alloc() returned 0 for the result */

/*
 * Every (ptr, len) below is bounds-checked against linear memory; a pair
 * outside it traps the call (TRAP). The host copies what it reads before
 * returning, so buffers may be reused at once.
 */

/* forge.log(level: i32, ptr: i32, len: i32) -> ()          needs "log"
 * One UTF-8 log line (at most 16 KiB kept; at most 256 lines per call).
 * Levels outside 0..3 are logged as info. */
FORGE_IMPORT("log") void forge_log(int32_t level, const void *ptr, size_t len);

/* forge.set_error(ptr: i32, len: i32) -> ()                no permission
 * Fail the current call with PLUGIN_ERROR and this UTF-8 message (at most
 * 8 KiB kept). The handler's output is ignored. Last message wins. During
 * init() it gives the reason for a non-zero return. */
FORGE_IMPORT("set_error") void forge_set_error(const void *ptr, size_t len);

/* forge.reject(ptr: i32, len: i32) -> ()                   no permission
 * Like set_error, but the call fails with REJECTED: the input is bad for
 * good and must not be retried (a durable job goes to dead letter at once). */
FORGE_IMPORT("reject") void forge_reject(const void *ptr, size_t len);

/* forge.now() -> i64                                        needs "clock"
 * Wall-clock time, nanoseconds since the Unix epoch. */
FORGE_IMPORT("now") int64_t forge_now(void);

/* forge.random(ptr: i32, len: i32) -> i32                   needs "random"
 * Fill [ptr, ptr+len) with cryptographically secure random bytes.
 * 0, or FORGE_HOST_TOO_LARGE when len > 65536. */
FORGE_IMPORT("random") int32_t forge_random(void *ptr, size_t len);

/* forge.config_get(key_ptr: i32, key_len: i32) -> i64       needs "config"
 * The deployment's config value for key (UTF-8, at most 256 bytes):
 * a packed block, 0 for an empty value, FORGE_HOST_NOT_FOUND, or
 * FORGE_HOST_TOO_LARGE if alloc() returned 0. */
FORGE_IMPORT("config_get") int64_t forge_config_get(const void *key, size_t key_len);

/* forge.emit(subj_ptr: i32, subj_len: i32, data_ptr: i32, data_len: i32) -> i32
 *                                          needs "publish:<pattern>" covering subj
 * Publish data (at most 1 MiB) on the literal NATS subject subj (at most 256
 * bytes, no wildcards). Fire-and-forget: 0 means handed to the bus, not
 * delivered. FORGE_HOST_TOO_LARGE, or FORGE_HOST_FAILED without a bus. */
FORGE_IMPORT("emit")
int32_t forge_emit(const void *subject, size_t subject_len, const void *data, size_t data_len);

/* forge.kv_get(bucket_ptr, bucket_len, key_ptr, key_len: i32) -> i64
 *                                                         needs "kv:<bucket>"
 * The value stored under key: a packed block, 0 for an empty value,
 * FORGE_HOST_NOT_FOUND, FORGE_HOST_TIMEOUT, FORGE_HOST_FAILED or
 * FORGE_HOST_TOO_LARGE. Waits at most the call's remaining deadline. */
FORGE_IMPORT("kv_get")
int64_t forge_kv_get(const void *bucket, size_t bucket_len, const void *key, size_t key_len);

/* forge.kv_put(bucket_ptr, bucket_len, key_ptr, key_len, val_ptr, val_len: i32) -> i32
 *                                                         needs "kv:<bucket>"
 * Store value (at most 1 MiB) under key. 0, FORGE_HOST_TOO_LARGE,
 * FORGE_HOST_TIMEOUT or FORGE_HOST_FAILED. Waits at most the remaining
 * deadline. */
FORGE_IMPORT("kv_put")
int32_t forge_kv_put(const void *bucket, size_t bucket_len, const void *key, size_t key_len,
                     const void *value, size_t value_len);

/* forge.call(plugin_ptr, plugin_len, fn_ptr, fn_len, in_ptr, in_len: i32) -> i64
 *                                                         needs "call:<plugin>"
 * Call another plugin's function with input (at most 8 MiB). Its output as a
 * packed block (0 for empty output), or FORGE_HOST_NOT_FOUND (no such plugin,
 * function, or no worker), FORGE_HOST_DENIED, FORGE_HOST_TIMEOUT,
 * FORGE_HOST_FAILED (any other failure of the callee or the bus) or
 * FORGE_HOST_TOO_LARGE. The callee gets the remaining deadline; nesting is
 * limited (MAX_CALL_DEPTH, docs/abi.md). */
FORGE_IMPORT("call")
int64_t forge_call(const void *plugin, size_t plugin_len, const void *fn, size_t fn_len,
                   const void *input, size_t input_len);

/* forge.event_subject() -> i64                              no permission
 * The subject of the event a trigger runs this call for: a packed block,
 * FORGE_HOST_NOT_FOUND when the call is not handling a trigger event (an
 * invoke, a job, a nested call), or FORGE_HOST_TOO_LARGE if alloc() returned 0. */
FORGE_IMPORT("event_subject") int64_t forge_event_subject(void);

/* forge.event_header(name_ptr: i32, name_len: i32) -> i64   no permission
 * The value of header name (UTF-8, at most 256 bytes, matched exactly) of
 * that event: a packed block, 0 for an empty value, FORGE_HOST_NOT_FOUND
 * (no such header, or no trigger event), or FORGE_HOST_TOO_LARGE. */
FORGE_IMPORT("event_header") int64_t forge_event_header(const void *name, size_t name_len);

/* ---- small helpers ------------------------------------------------------ */

static inline forge_result_t forge_result(const void *ptr, size_t len) {
    return ((uint64_t)(uint32_t)(uintptr_t)ptr << 32) | (uint64_t)(uint32_t)len;
}

#define FORGE_EMPTY ((forge_result_t)0)

static inline size_t forge_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

/* Log a NUL-terminated string. */
static inline void forge_log_str(int32_t level, const char *msg) {
    forge_log(level, msg, forge_strlen(msg));
}

/* Fail the current call with a NUL-terminated message: `return forge_fail("...");` */
static inline forge_result_t forge_fail(const char *msg) {
    forge_set_error(msg, forge_strlen(msg));
    return FORGE_EMPTY;
}

/* Reject the input for good (REJECTED, never retried): `return forge_reject_str("...");` */
static inline forge_result_t forge_reject_str(const char *msg) {
    forge_reject(msg, forge_strlen(msg));
    return FORGE_EMPTY;
}

/* With bulk-memory enabled these compile to memory.copy / memory.fill. */
#define forge_memcpy(dst, src, n) __builtin_memcpy((dst), (src), (n))
#define forge_memset(dst, c, n) __builtin_memset((dst), (c), (n))

/* ---- allocator ---------------------------------------------------------- */

/*
 * A stack allocator with deferred free, placed after the linker's
 * __heap_base and growing linear memory on demand.
 *
 * Every block is its payload rounded up to 8 bytes followed by an 8-byte
 * footer {uint32 rounded_size, uint32 state}. forge_free() marks a block
 * free, then pops every free block off the top of the heap. So blocks freed
 * in any order are reclaimed once everything above them is free too, and a
 * call whose input and output are both freed leaves the heap exactly as it
 * was. forge_free() ignores pairs that are not a live block (static data, a
 * view into another block, a second free), which is what the forge/1
 * dealloc protocol needs when a handler returns such a pair.
 *
 * Memory held across calls (e.g. allocated in init()) is fine but pins
 * everything allocated after it until it is freed: allocate long-lived data
 * first, or keep it in static storage.
 */
void *forge_alloc(size_t size);
void forge_free(void *ptr, size_t size);

/*
 * Return a copy of (data, len) as the handler output. The copy is a fresh
 * block of exactly `len` bytes, so the host's dealloc(out_ptr, out_len)
 * releases it. Fails the call if memory runs out.
 */
static inline forge_result_t forge_output_copy(const void *data, size_t len) {
    if (len == 0) return FORGE_EMPTY;
    void *out = forge_alloc(len);
    if (!out) return forge_fail("out of memory");
    forge_memcpy(out, data, len);
    return forge_result(out, len);
}

/* ---- results of host functions ------------------------------------------ */

/*
 * An i64 host result is either a HOST_* code (-1..-5; every error is a
 * negative value >= INT32_MIN) or a block packed as (ptr << 32) | len. Test
 * with forge_is_error, not `r < 0`: a block at an address >= 2 GiB packs to
 * a negative i64 too. 0 is an empty result (no block).
 */
static inline int forge_is_error(int64_t r) { return r < 0 && r >= -(int64_t)0x80000000; }
static inline uint8_t *forge_unpack_ptr(int64_t r) {
    return (uint8_t *)(uintptr_t)(uint32_t)((uint64_t)r >> 32);
}
static inline size_t forge_unpack_len(int64_t r) { return (size_t)(uint32_t)(uint64_t)r; }

/* A host result: a block the plugin owns (ptr may be 0 when len is 0), or err < 0. */
typedef struct {
    uint8_t *ptr;
    size_t len;
    int32_t err; /* FORGE_HOST_OK or a FORGE_HOST_* code */
} forge_buf_t;

static inline forge_buf_t forge_unpack(int64_t r) {
    forge_buf_t b = {0, 0, FORGE_HOST_OK};
    if (forge_is_error(r)) {
        b.err = (int32_t)r;
    } else {
        b.ptr = forge_unpack_ptr(r);
        b.len = forge_unpack_len(r);
    }
    return b;
}

/* Release a result block obtained from the host (it came from forge_alloc,
 * via the exported alloc). With FORGE_NO_ALLOC_EXPORTS, free it with your own
 * allocator instead. */
static inline void forge_buf_free(forge_buf_t b) {
    if (b.ptr) forge_free(b.ptr, b.len);
}

/* Name of a FORGE_HOST_* code, for messages. */
static inline const char *forge_host_error_name(int32_t code) {
    switch (code) {
    case FORGE_HOST_OK: return "OK";
    case FORGE_HOST_NOT_FOUND: return "NOT_FOUND";
    case FORGE_HOST_DENIED: return "DENIED";
    case FORGE_HOST_FAILED: return "FAILED";
    case FORGE_HOST_TIMEOUT: return "TIMEOUT";
    case FORGE_HOST_TOO_LARGE: return "TOO_LARGE";
    default: return "UNKNOWN";
    }
}

/* ---- host functions with NUL-terminated names ---------------------------- */

/* Config value for key: .err is FORGE_HOST_NOT_FOUND when it is not set. */
static inline forge_buf_t forge_config_get_str(const char *key) {
    return forge_unpack(forge_config_get(key, forge_strlen(key)));
}

/* Value under bucket/key: .err is FORGE_HOST_NOT_FOUND when there is none. */
static inline forge_buf_t forge_kv_get_str(const char *bucket, const char *key) {
    return forge_unpack(forge_kv_get(bucket, forge_strlen(bucket), key, forge_strlen(key)));
}

static inline int32_t forge_kv_put_str(const char *bucket, const char *key, const void *value,
                                       size_t value_len) {
    return forge_kv_put(bucket, forge_strlen(bucket), key, forge_strlen(key), value, value_len);
}

static inline int32_t forge_emit_str(const char *subject, const void *data, size_t data_len) {
    return forge_emit(subject, forge_strlen(subject), data, data_len);
}

static inline forge_buf_t forge_call_str(const char *plugin, const char *fn, const void *input,
                                         size_t input_len) {
    return forge_unpack(
        forge_call(plugin, forge_strlen(plugin), fn, forge_strlen(fn), input, input_len));
}

/* Header of the current trigger event: .err is FORGE_HOST_NOT_FOUND when there is none. */
static inline forge_buf_t forge_event_header_str(const char *name) {
    return forge_unpack(forge_event_header(name, forge_strlen(name)));
}

#ifdef FORGE_IMPLEMENTATION

extern unsigned char __heap_base; /* provided by wasm-ld */

#define FORGE__LIVE 0x4556494cu /* "LIVE" */
#define FORGE__FREE 0x45455246u /* "FREE" */
#define FORGE__MAX_ALLOC 0x40000000u /* 1 GiB: refuse larger requests */

static uintptr_t forge__top; /* 0 until the first allocation */

/* First heap address, 8-aligned. */
static inline uintptr_t forge__base(void) {
    return ((uintptr_t)&__heap_base + 7u) & ~(uintptr_t)7u;
}

void *forge_alloc(size_t size) {
    if (forge__top == 0) forge__top = forge__base();
    if (size > FORGE__MAX_ALLOC) return 0;
    uintptr_t ptr = forge__top;
    uint32_t rounded = ((uint32_t)size + 7u) & ~7u;
    uint64_t end = (uint64_t)ptr + rounded + 8u;
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) << 16;
    if (end > have) {
        uint64_t pages = (end - have + 0xffffu) >> 16;
        if (__builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1) return 0;
    }
    uint32_t *footer = (uint32_t *)(uintptr_t)(end - 8u);
    footer[0] = rounded;
    footer[1] = FORGE__LIVE;
    forge__top = (uintptr_t)end;
    return (void *)ptr;
}

void forge_free(void *p, size_t size) {
    uintptr_t ptr = (uintptr_t)p;
    if (forge__top == 0 || ptr < forge__base() || ptr >= forge__top) return;
    if (size > FORGE__MAX_ALLOC) return;
    uint32_t rounded = ((uint32_t)size + 7u) & ~7u;
    uint64_t footer_at = (uint64_t)ptr + rounded;
    if (footer_at + 8u > forge__top) return;
    uint32_t *footer = (uint32_t *)(uintptr_t)footer_at;
    if (footer[0] != rounded || footer[1] != FORGE__LIVE) return;
    footer[1] = FORGE__FREE;
    uintptr_t base = forge__base();
    while (forge__top >= base + 8u) {
        uint32_t *f = (uint32_t *)(forge__top - 8u);
        if (f[1] != FORGE__FREE) break;
        forge__top -= (uintptr_t)f[0] + 8u;
    }
}

#ifndef FORGE_NO_ALLOC_EXPORTS
/* alloc(size: i32) -> i32 */
FORGE_EXPORT("alloc") void *forge_export_alloc(size_t size) { return forge_alloc(size); }
/* dealloc(ptr: i32, size: i32) -> () */
FORGE_EXPORT("dealloc") void forge_export_dealloc(void *ptr, size_t size) { forge_free(ptr, size); }
#endif

#endif /* FORGE_IMPLEMENTATION */

#endif /* FORGE_H */
