;; An Extism-ABI plugin using ForgeOne's own host functions, offered to Extism
;; guests in module extism:host/user (arguments are kernel block offsets; a
;; result is a block offset, 0 for empty, or a negative HOST_* code).
(module
  (import "extism:host/env" "input_offset" (func $input_offset (result i64)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "length" (func $length (param i64) (result i64)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (import "extism:host/user" "emit" (func $emit (param i64 i64) (result i64)))
  (import "extism:host/user" "kv_get" (func $kv_get (param i64 i64) (result i64)))
  (import "extism:host/user" "kv_put" (func $kv_put (param i64 i64 i64) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "events.extism")  ;; 13 bytes
  (data (i32.const 16) "state")         ;; 5
  (data (i32.const 32) "greeting")      ;; 8

  (func $str (param $p i32) (param $n i32) (result i64)
    (local $b i64) (local $i i32)
    (local.set $b (call $alloc (i64.extend_i32_u (local.get $n))))
    (block $done
      (loop $copy
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (call $store_u8 (i64.add (local.get $b) (i64.extend_i32_u (local.get $i)))
                        (i32.load8_u (i32.add (local.get $p) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $copy)))
    (local.get $b))

  ;; remember: kv_put(state, greeting, input), then kv_get it back as the output
  (func (export "remember") (result i32)
    (local $r i64)
    (local.set $r (call $kv_put (call $str (i32.const 16) (i32.const 5))
                                (call $str (i32.const 32) (i32.const 8))
                                (call $input_offset)))
    (if (i64.ne (local.get $r) (i64.const 0)) (then (return (i32.wrap_i64 (local.get $r)))))
    (local.set $r (call $kv_get (call $str (i32.const 16) (i32.const 5))
                                (call $str (i32.const 32) (i32.const 8))))
    (if (i64.lt_s (local.get $r) (i64.const 0)) (then (return (i32.wrap_i64 (local.get $r)))))
    (call $output_set (local.get $r) (call $length (local.get $r)))
    (i32.const 0))

  ;; announce: emit the input on events.extism
  (func (export "announce") (result i32)
    (i32.wrap_i64 (call $emit (call $str (i32.const 0) (i32.const 13)) (call $input_offset))))
)
