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

/* Import a host function `forge.<name>`. forge/1 hosts accept no other module. */
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
 * forge.log(level: i32, ptr: i32, len: i32) -> ()
 * Emit one UTF-8 log line. Fire-and-forget. Needs the "log" permission in
 * forge.json. An out-of-bounds (ptr, len) traps the call.
 */
FORGE_IMPORT("log") void forge_log(int32_t level, const void *ptr, size_t len);

/*
 * forge.set_error(ptr: i32, len: i32) -> ()
 * Mark the current call as failed (PLUGIN_ERROR) with this UTF-8 message.
 * The host copies the message immediately; the handler's output is ignored.
 * During init() it gives the reason for a non-zero return.
 */
FORGE_IMPORT("set_error") void forge_set_error(const void *ptr, size_t len);

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
