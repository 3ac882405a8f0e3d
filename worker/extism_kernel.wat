;; ForgeOne's kernel for the extism/1 ABI (docs/abi.md, "extism/1").
;;
;; Extism guests keep their input, output, error message, config values and
;; vars in a block memory that is separate from their own linear memory, and
;; reach it through `extism:host/env` functions (alloc, free, length,
;; load/store of u8 and u64, input_*, output_set, error_set). This module is
;; that block memory. The worker instantiates it next to each guest instance,
;; in the same Store, and links the guest's `extism:host/env` memory imports
;; to the functions exported here: a guest reading its input eight bytes at a
;; time stays in compiled wasm and never crosses into Python.
;;
;; Written for ForgeOne from the ABI's documented behaviour (offsets are u64,
;; 0 is "no block", alloc(0) = 0, length of a non-block = 0, the host resets
;; the memory at the start of every call).
;;
;; Layout of the memory:
;;   [0, 64)        status, written only by this module, read by the host after a call:
;;                    0: u64 output offset   8: u64 output length   16: u64 error block
;;                   24: u64 1 once the memory could not grow (the ceiling was reached)
;;   [64, top)      blocks, each a 16-byte header followed by its data:
;;                    h+0: u32 tag (USED or FREE)   h+4: u32 capacity (multiple of 8)
;;                    h+8: u64 length as requested  h+16: data (the block's offset)
;;   [top, size)    not yet handed out
;;
;; Loads and stores by the guest are confined to [64, top): the status words
;; cannot be forged by the guest, and anything else a buggy guest overwrites
;; (its own headers) can only break its own allocations, inside this memory.
;; Out-of-range offsets trap (the host reports TRAP and retires the instance).
(module
  (memory (export "memory") 1)

  (global $top (mut i32) (i32.const 64))
  ;; blocks marked FREE below $top; alloc only searches when there are some
  (global $free_blocks (mut i32) (i32.const 0))
  (global $in_off (mut i64) (i64.const 0))
  (global $in_len (mut i64) (i64.const 0))

  (func $used (result i32) (i32.const 0x44455355))   ;; "USED"
  (func $freed (result i32) (i32.const 0x45455246))  ;; "FREE"

  ;; The header of the block at data offset $d, or 0 if $d is not a live block.
  (func $header (param $d i64) (result i32)
    (local $h i32)
    (if (i64.lt_u (local.get $d) (i64.const 80)) (then (return (i32.const 0))))
    (if (i64.ge_u (local.get $d) (i64.extend_i32_u (global.get $top)))
      (then (return (i32.const 0))))
    (if (i32.wrap_i64 (i64.and (local.get $d) (i64.const 7))) (then (return (i32.const 0))))
    (local.set $h (i32.sub (i32.wrap_i64 (local.get $d)) (i32.const 16)))
    (if (i32.ne (i32.load (local.get $h)) (call $used)) (then (return (i32.const 0))))
    (local.get $h))

  ;; Make room for [top, $end): grow the memory if needed; 0 when it cannot.
  (func $reserve (param $end i64) (result i32)
    (local $have i64)
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.le_u (local.get $end) (local.get $have)) (then (return (i32.const 1))))
    (if (i32.eq
          (memory.grow
            (i32.wrap_i64
              (i64.shr_u (i64.add (i64.sub (local.get $end) (local.get $have)) (i64.const 0xffff))
                         (i64.const 16))))
          (i32.const -1))
      (then
        (i64.store (i32.const 24) (i64.const 1))
        (return (i32.const 0))))
    (i32.const 1))

  ;; First fit among free blocks, merging runs of free neighbours as it walks.
  ;; Returns the header of a block of at least $cap bytes, now USED, or 0.
  (func $reuse (param $cap i32) (result i32)
    (local $h i32) (local $c i32) (local $next i32) (local $rest i32)
    (local.set $h (i32.const 64))
    (block $done
      (loop $walk
        (br_if $done (i32.ge_u (local.get $h) (global.get $top)))
        (local.set $c (i32.load offset=4 (local.get $h)))
        ;; a header the guest overwrote could point past the heap: stop there
        (br_if $done (i32.gt_u (local.get $c)
                               (i32.sub (i32.sub (global.get $top) (local.get $h)) (i32.const 16))))
        (if (i32.eq (i32.load (local.get $h)) (call $freed))
          (then
            (block $merged
              (loop $merge
                (local.set $next (i32.add (i32.add (local.get $h) (i32.const 16)) (local.get $c)))
                (br_if $merged (i32.ge_u (local.get $next) (global.get $top)))
                (br_if $merged (i32.ne (i32.load (local.get $next)) (call $freed)))
                (br_if $merged
                  (i32.gt_u (i32.load offset=4 (local.get $next))
                            (i32.sub (i32.sub (global.get $top) (local.get $next)) (i32.const 16))))
                (local.set $c (i32.add (i32.add (local.get $c) (i32.const 16))
                                       (i32.load offset=4 (local.get $next))))
                (i32.store offset=4 (local.get $h) (local.get $c))
                (global.set $free_blocks (i32.sub (global.get $free_blocks) (i32.const 1)))
                (br $merge)))
            ;; a free run that ends the heap goes back to the bump area
            (if (i32.eq (i32.add (i32.add (local.get $h) (i32.const 16)) (local.get $c))
                        (global.get $top))
              (then
                (global.set $top (local.get $h))
                (global.set $free_blocks (i32.sub (global.get $free_blocks) (i32.const 1)))
                (return (i32.const 0))))
            (if (i32.ge_u (local.get $c) (local.get $cap))
              (then
                (local.set $rest (i32.sub (local.get $c) (local.get $cap)))
                (if (i32.ge_u (local.get $rest) (i32.const 32))
                  (then ;; split: the tail stays free (the count of free blocks is unchanged)
                    (local.set $next (i32.add (i32.add (local.get $h) (i32.const 16))
                                              (local.get $cap)))
                    (i32.store (local.get $next) (call $freed))
                    (i32.store offset=4 (local.get $next)
                               (i32.sub (local.get $rest) (i32.const 16)))
                    (i64.store offset=8 (local.get $next) (i64.const 0))
                    (i32.store offset=4 (local.get $h) (local.get $cap)))
                  (else
                    (global.set $free_blocks
                                (i32.sub (global.get $free_blocks) (i32.const 1)))))
                (i32.store (local.get $h) (call $used))
                (return (local.get $h))))))
        (local.set $h (i32.add (i32.add (local.get $h) (i32.const 16)) (local.get $c)))
        (br $walk)))
    (i32.const 0))

  ;; alloc(n) -> offset of a new block of n bytes; 0 for n = 0 or when memory runs out.
  (func $alloc (export "alloc") (param $n i64) (result i64)
    (local $cap i32) (local $h i32) (local $end i64)
    (if (i64.eqz (local.get $n)) (then (return (i64.const 0))))
    (if (i64.gt_u (local.get $n) (i64.const 0xffff0000)) (then (return (i64.const 0))))
    (local.set $cap (i32.and (i32.add (i32.wrap_i64 (local.get $n)) (i32.const 7))
                             (i32.const -8)))
    (if (global.get $free_blocks)
      (then
        (local.set $h (call $reuse (local.get $cap)))
        (if (local.get $h)
          (then
            (i64.store offset=8 (local.get $h) (local.get $n))
            (return (i64.extend_i32_u (i32.add (local.get $h) (i32.const 16))))))))
    (local.set $h (global.get $top))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $h))
                             (i64.extend_i32_u (i32.add (local.get $cap) (i32.const 16)))))
    (if (i64.gt_u (local.get $end) (i64.const 0xffff0000)) (then (return (i64.const 0))))
    (if (i32.eqz (call $reserve (local.get $end))) (then (return (i64.const 0))))
    (i32.store (local.get $h) (call $used))
    (i32.store offset=4 (local.get $h) (local.get $cap))
    (i64.store offset=8 (local.get $h) (local.get $n))
    (global.set $top (i32.wrap_i64 (local.get $end)))
    (i64.extend_i32_u (i32.add (local.get $h) (i32.const 16))))

  ;; free(offset): the block may be reused; anything that is not a live block is ignored.
  (func (export "free") (param $d i64)
    (local $h i32)
    (local.set $h (call $header (local.get $d)))
    (if (i32.eqz (local.get $h)) (then (return)))
    (i32.store (local.get $h) (call $freed))
    (if (i32.eq (i32.add (i32.add (local.get $h) (i32.const 16)) (i32.load offset=4 (local.get $h)))
                (global.get $top))
      (then (global.set $top (local.get $h)))
      (else (global.set $free_blocks (i32.add (global.get $free_blocks) (i32.const 1))))))

  ;; length(offset) -> the block's length, 0 if it is not a live block.
  (func $length (export "length") (param $d i64) (result i64)
    (local $h i32)
    (local.set $h (call $header (local.get $d)))
    (if (result i64) (local.get $h)
      (then (i64.load offset=8 (local.get $h)))
      (else (i64.const 0))))

  ;; length_unsafe: the same answer (the checks cost a few instructions).
  (func (export "length_unsafe") (param $d i64) (result i64)
    (call $length (local.get $d)))

  ;; --- byte access, confined to the heap --------------------------------------------
  (func (export "load_u8") (param $p i64) (result i32)
    (if (i32.or (i64.lt_u (local.get $p) (i64.const 64))
                (i64.ge_u (local.get $p) (i64.extend_i32_u (global.get $top))))
      (then unreachable))
    (i32.load8_u (i32.wrap_i64 (local.get $p))))

  (func (export "load_u64") (param $p i64) (result i64)
    (if (i32.or (i64.lt_u (local.get $p) (i64.const 64))
                (i64.gt_u (local.get $p) (i64.extend_i32_u (i32.sub (global.get $top) (i32.const 8)))))
      (then unreachable))
    (i64.load (i32.wrap_i64 (local.get $p))))

  (func (export "store_u8") (param $p i64) (param $v i32)
    (if (i32.or (i64.lt_u (local.get $p) (i64.const 64))
                (i64.ge_u (local.get $p) (i64.extend_i32_u (global.get $top))))
      (then unreachable))
    (i32.store8 (i32.wrap_i64 (local.get $p)) (local.get $v)))

  (func (export "store_u64") (param $p i64) (param $v i64)
    (if (i32.or (i64.lt_u (local.get $p) (i64.const 64))
                (i64.gt_u (local.get $p) (i64.extend_i32_u (i32.sub (global.get $top) (i32.const 8)))))
      (then unreachable))
    (i64.store (i32.wrap_i64 (local.get $p)) (local.get $v)))

  ;; --- the call's input (indexes are relative to its start) --------------------------
  (func (export "input_length") (result i64) (global.get $in_len))

  (func (export "input_offset") (result i64) (global.get $in_off))

  (func (export "input_load_u8") (param $i i64) (result i32)
    (if (i64.ge_u (local.get $i) (global.get $in_len)) (then unreachable))
    (i32.load8_u (i32.wrap_i64 (i64.add (global.get $in_off) (local.get $i)))))

  (func (export "input_load_u64") (param $i i64) (result i64)
    (if (i32.or (i64.lt_u (global.get $in_len) (i64.const 8))
                (i64.gt_u (local.get $i) (i64.sub (global.get $in_len) (i64.const 8))))
      (then unreachable))
    (i64.load (i32.wrap_i64 (i64.add (global.get $in_off) (local.get $i)))))

  ;; --- the call's result: recorded in the status words for the host -----------------
  (func (export "output_set") (param $p i64) (param $n i64)
    (i64.store (i32.const 0) (local.get $p))
    (i64.store (i32.const 8) (local.get $n)))

  (func (export "error_set") (param $p i64)
    (i64.store (i32.const 16) (local.get $p)))

  ;; --- for the host only (never linked to a guest) -----------------------------------
  ;; forge_begin(n) -> offset of an n-byte input block: empties the memory, clears the
  ;; status words and makes that block the call's input. 0 when n = 0 or out of memory.
  (func (export "forge_begin") (param $n i64) (result i64)
    (global.set $top (i32.const 64))
    (global.set $free_blocks (i32.const 0))
    (i64.store (i32.const 0) (i64.const 0))
    (i64.store (i32.const 8) (i64.const 0))
    (i64.store (i32.const 16) (i64.const 0))
    (i64.store (i32.const 24) (i64.const 0))
    (global.set $in_off (call $alloc (local.get $n)))
    (global.set $in_len
      (select (local.get $n) (i64.const 0) (i64.ne (global.get $in_off) (i64.const 0))))
    (global.get $in_off))
)
