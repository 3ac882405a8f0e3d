;; hello - forge/1 example plugin (WebAssembly text).
;;
;;   greet(name) -> "Hello, <name>!"   and logs the greeting at level info.
;;
;; Imports forge.log, so forge.json asks for the "log" permission.
(module
  (import "forge" "log" (func $log (param i32 i32 i32)))

  (memory (export "memory") 1)
  (data (i32.const 16) "Hello, ") ;; 7 bytes at 16
  (data (i32.const 23) "!")

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

  (func (export "greet") (param $ptr i32) (param $len i32) (result i64)
    (local $out i32) (local $out_len i32)
    (local.set $out_len (i32.add (local.get $len) (i32.const 8)))
    (local.set $out (call $alloc (local.get $out_len)))
    ;; alloc only fails when memory cannot grow: trap (host: OUT_OF_MEMORY)
    (if (i32.eqz (local.get $out)) (then (unreachable)))
    (memory.copy (local.get $out) (i32.const 16) (i32.const 7))
    (memory.copy (i32.add (local.get $out) (i32.const 7)) (local.get $ptr) (local.get $len))
    (i32.store8 (i32.add (i32.add (local.get $out) (i32.const 7)) (local.get $len))
                (i32.const 0x21)) ;; '!'
    (call $log (i32.const 1) (local.get $out) (local.get $out_len))
    (call $pack (local.get $out) (local.get $out_len)))
)
