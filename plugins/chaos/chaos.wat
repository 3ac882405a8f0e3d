;; chaos - forge/1 fault-injection plugin for demos and tests.
;;
;;   ok          -> "ok"
;;   count       -> decimal number of `count` calls served by this instance
;;                  ("1" on a fresh instance; shows pooling and reuse)
;;   trap        -> executes `unreachable`                       (TRAP)
;;   spin        -> loops forever                                (TIMEOUT)
;;   grow        -> memory.grow by 1 page until it returns -1, then
;;                  `unreachable`                                (OUT_OF_MEMORY)
;;   recurse     -> unbounded recursion, exhausts the wasm stack (TRAP)
;;   fail        -> set_error("bad input: <input>"), returns 0  (PLUGIN_ERROR)
;;   bad_output  -> (ptr, len) that straddles the end of memory  (TRAP)
;;   huge_output -> (0, 0x7fffffff)                              (OUTPUT_TOO_LARGE)
;;   bad_log     -> forge.log with (0xfffffff0, 32), which wraps
;;                  around in 32-bit arithmetic                  (TRAP)
;;
;; forge.json sets timeout_ms 1000 and memory_mb 16.
(module
  (import "forge" "log" (func $log (param i32 i32 i32)))
  (import "forge" "set_error" (func $set_error (param i32 i32)))

  (memory (export "memory") 1)
  (data (i32.const 16) "ok")
  (data (i32.const 32) "bad input: ") ;; 11 bytes
  ;; 64..80: scratch for `count`

  (global $calls (mut i32) (i32.const 0))

  ;; ---- allocator ----------------------------------------------------------
  ;; Same stack allocator with deferred free as plugins/echo/echo.wat (see the
  ;; comment there). Addresses below heap_base hold static data.
  (global $heap_base i32 (i32.const 1024))
  (global $top (mut i32) (i32.const 1024))
  (global $LIVE i32 (i32.const 0x4556494c)) ;; "LIVE"
  (global $FREE i32 (i32.const 0x45455246)) ;; "FREE"

  (func $alloc (export "alloc") (param $size i32) (result i32)
    (local $ptr i32) (local $rounded i32) (local $end i32) (local $have i64)
    ;; refuse sizes over 1 GiB (this also covers "negative" sizes)
    (if (i32.gt_u (local.get $size) (i32.const 0x40000000))
      (then (return (i32.const 0))))
    (local.set $ptr (global.get $top))
    (local.set $rounded
      (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8)))
    (local.set $end
      (i32.add (i32.add (local.get $ptr) (local.get $rounded)) (i32.const 8)))
    (if (i32.lt_u (local.get $end) (local.get $ptr)) ;; wrapped past 4 GiB
      (then (return (i32.const 0))))
    ;; grow memory when the block does not fit (sizes in i64: no overflow)
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (i64.extend_i32_u (local.get $end)) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.wrap_i64
                  (i64.shr_u
                    (i64.add
                      (i64.sub (i64.extend_i32_u (local.get $end)) (local.get $have))
                      (i64.const 0xffff))
                    (i64.const 16))))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (i32.store (i32.sub (local.get $end) (i32.const 8)) (local.get $rounded))
    (i32.store (i32.sub (local.get $end) (i32.const 4)) (global.get $LIVE))
    (global.set $top (local.get $end))
    (local.get $ptr))

  (func $dealloc (export "dealloc") (param $ptr i32) (param $size i32)
    (local $footer i32)
    (if (i32.lt_u (local.get $ptr) (global.get $heap_base)) (then (return)))
    (if (i32.ge_u (local.get $ptr) (global.get $top)) (then (return)))
    (if (i32.gt_u (local.get $size) (i32.const 0x40000000)) (then (return)))
    (local.set $footer
      (i32.add (local.get $ptr)
        (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    ;; the footer must lie inside the heap (top >= heap_base + 8 here)
    (if (i32.lt_u (local.get $footer) (local.get $ptr)) (then (return)))
    (if (i32.gt_u (local.get $footer) (i32.sub (global.get $top) (i32.const 8)))
      (then (return)))
    (if (i32.ne (i32.load (local.get $footer))
                (i32.sub (local.get $footer) (local.get $ptr)))
      (then (return)))
    (if (i32.ne (i32.load offset=4 (local.get $footer)) (global.get $LIVE))
      (then (return)))
    (i32.store offset=4 (local.get $footer) (global.get $FREE))
    (block $done
      (loop $pop
        (br_if $done (i32.le_u (global.get $top) (global.get $heap_base)))
        (br_if $done
          (i32.ne (i32.load (i32.sub (global.get $top) (i32.const 4)))
                  (global.get $FREE)))
        (global.set $top
          (i32.sub (i32.sub (global.get $top) (i32.const 8))
                   (i32.load (i32.sub (global.get $top) (i32.const 8)))))
        (br $pop))))

  ;; (ptr << 32) | len
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))

  ;; ---- handlers -------------------------------------------------------------

  (func (export "ok") (param i32 i32) (result i64)
    ;; static data; the host's dealloc of this pair is ignored (below heap_base)
    (call $pack (i32.const 16) (i32.const 2)))

  (func (export "count") (param i32 i32) (result i64)
    (local $n i32) (local $p i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (local.set $n (global.get $calls))
    (local.set $p (i32.const 80))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 0x30) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (local.get $n)))
    (call $pack (local.get $p) (i32.sub (i32.const 80) (local.get $p))))

  (func (export "trap") (param i32 i32) (result i64)
    (unreachable))

  (func (export "spin") (param i32 i32) (result i64)
    (loop $forever (br $forever))
    (unreachable))

  (func (export "grow") (param i32 i32) (result i64)
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    (unreachable))

  (func $down (param $n i32) (result i32)
    ;; not a tail call: the addition keeps every frame alive
    (i32.add (call $down (i32.add (local.get $n) (i32.const 1))) (local.get $n)))

  (func (export "recurse") (param i32 i32) (result i64)
    (i64.extend_i32_u (call $down (i32.const 0))))

  (func (export "fail") (param $ptr i32) (param $len i32) (result i64)
    (local $msg i32) (local $msg_len i32)
    (local.set $msg_len (i32.add (local.get $len) (i32.const 11)))
    (local.set $msg (call $alloc (local.get $msg_len)))
    (if (i32.eqz (local.get $msg)) (then (unreachable)))
    (memory.copy (local.get $msg) (i32.const 32) (i32.const 11))
    (memory.copy (i32.add (local.get $msg) (i32.const 11)) (local.get $ptr) (local.get $len))
    ;; the host copies the message during the call, so it can be freed at once
    (call $set_error (local.get $msg) (local.get $msg_len))
    (call $dealloc (local.get $msg) (local.get $msg_len))
    (i64.const 0))

  (func (export "bad_output") (param i32 i32) (result i64)
    ;; 16 bytes starting 8 bytes before the end of memory
    (call $pack
      (i32.sub (i32.shl (memory.size) (i32.const 16)) (i32.const 8))
      (i32.const 16)))

  (func (export "huge_output") (param i32 i32) (result i64)
    (call $pack (i32.const 0) (i32.const 0x7fffffff)))

  (func (export "bad_log") (param i32 i32) (result i64)
    (call $log (i32.const 1) (i32.const 0xfffffff0) (i32.const 32))
    (i64.const 0))
)
