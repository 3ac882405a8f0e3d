;; echo - forge/1 example plugin (WebAssembly text).
;;
;;   echo(input)  -> input, unchanged (returns a view of the input buffer)
;;   upper(input) -> input with ASCII a-z upper-cased (a fresh buffer)
;;
;; No imports. The allocator below is shared by all WAT plugins in this tree.
(module
  (memory (export "memory") 1)

  ;; ---- allocator ----------------------------------------------------------
  ;; A stack allocator with deferred free. The heap is [heap_base, top).
  ;; Each block is its payload rounded up to 8 bytes followed by an 8-byte
  ;; footer {i32 rounded_size, i32 state}. dealloc marks a block FREE, then
  ;; pops every FREE block off the top of the heap, so blocks are reclaimed in
  ;; whatever order the host frees them and a call leaves the heap as it found
  ;; it. dealloc ignores pairs that are not a live block (static data, a view
  ;; of another block, a second free), as the forge/1 protocol requires when
  ;; a handler returns such a pair. Addresses below heap_base hold static data.
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

  ;; The input buffer belongs to the plugin for the duration of the call, so
  ;; it can be returned as the output. The host frees the output pair first
  ;; (which releases the input block) and then the input pair (ignored).
  (func (export "echo") (param $ptr i32) (param $len i32) (result i64)
    (call $pack (local.get $ptr) (local.get $len)))

  (func (export "upper") (param $ptr i32) (param $len i32) (result i64)
    (local $out i32) (local $i i32) (local $c i32)
    (local.set $out (call $alloc (local.get $len)))
    ;; alloc only fails when memory cannot grow: trap (host: OUT_OF_MEMORY)
    (if (i32.eqz (local.get $out)) (then (unreachable)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $c (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
        (if (i32.lt_u (i32.sub (local.get $c) (i32.const 0x61)) (i32.const 26)) ;; a-z
          (then (local.set $c (i32.sub (local.get $c) (i32.const 0x20)))))
        (i32.store8 (i32.add (local.get $out) (local.get $i)) (local.get $c))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $pack (local.get $out) (local.get $len)))
)
