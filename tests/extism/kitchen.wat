;; An Extism-ABI plugin written by hand: it uses only what an Extism PDK would
;; (extism:host/env imports, handlers () -> i32 and () -> ()), so the same
;; .wasm runs under ForgeOne's extism/1 adapter and under Extism's own hosts.
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "free" (func $free (param i64)))
  (import "extism:host/env" "length" (func $length (param i64) (result i64)))
  (import "extism:host/env" "load_u8" (func $load_u8 (param i64) (result i32)))
  (import "extism:host/env" "load_u64" (func $load_u64 (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (import "extism:host/env" "error_set" (func $error_set (param i64)))
  (import "extism:host/env" "config_get" (func $config_get (param i64) (result i64)))
  (import "extism:host/env" "var_get" (func $var_get (param i64) (result i64)))
  (import "extism:host/env" "var_set" (func $var_set (param i64 i64)))
  (import "extism:host/env" "http_request" (func $http_request (param i64 i64) (result i64)))
  (import "extism:host/env" "http_status_code" (func $http_status_code (result i32)))
  (import "extism:host/env" "log_info" (func $log_info (param i64)))

  (memory (export "memory") 2)
  (data (i32.const 16) "bad input: ")                 ;; 11 bytes
  (data (i32.const 32) "n")                           ;; the var count uses
  (data (i32.const 48) "{\"method\":\"GET\",\"url\":\"") ;; 23 bytes
  (data (i32.const 80) "\"}")                         ;; 2 bytes
  (data (i32.const 96) "hello from a () -> () handler")  ;; 29 bytes

  ;; guest scratch: input copies land at 4096
  (global $buf i32 (i32.const 4096))

  ;; copy the whole input into guest memory at $dst, 8 bytes per call; returns its length
  (func $read_input (param $dst i32) (result i32)
    (local $n i64) (local $i i64)
    (local.set $n (call $input_length))
    (block $done
      (loop $chunks
        (br_if $done (i64.gt_u (i64.add (local.get $i) (i64.const 8)) (local.get $n)))
        (i64.store (i32.add (local.get $dst) (i32.wrap_i64 (local.get $i)))
                   (call $input_load_u64 (local.get $i)))
        (local.set $i (i64.add (local.get $i) (i64.const 8)))
        (br $chunks)))
    (block $done
      (loop $bytes
        (br_if $done (i64.ge_u (local.get $i) (local.get $n)))
        (i32.store8 (i32.add (local.get $dst) (i32.wrap_i64 (local.get $i)))
                    (call $input_load_u8 (local.get $i)))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $bytes)))
    (i32.wrap_i64 (local.get $n)))

  ;; a new kernel block holding guest bytes [$src, $src+$len)
  (func $to_block (param $src i32) (param $len i32) (result i64)
    (local $off i64) (local $i i32)
    (local.set $off (call $alloc (i64.extend_i32_u (local.get $len))))
    (block $done
      (loop $chunks
        (br_if $done (i32.gt_u (i32.add (local.get $i) (i32.const 8)) (local.get $len)))
        (call $store_u64 (i64.add (local.get $off) (i64.extend_i32_u (local.get $i)))
                         (i64.load (i32.add (local.get $src) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 8)))
        (br $chunks)))
    (block $done
      (loop $bytes
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (call $store_u8 (i64.add (local.get $off) (i64.extend_i32_u (local.get $i)))
                        (i32.load8_u (i32.add (local.get $src) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $bytes)))
    (local.get $off))

  (func $output (param $src i32) (param $len i32)
    (call $output_set (call $to_block (local.get $src) (local.get $len))
                      (i64.extend_i32_u (local.get $len))))

  ;; decimal digits of $v written at 256; returns their count
  (func $decimal (param $v i64) (result i32)
    (local $n i32) (local $t i64) (local $i i32)
    (local.set $t (local.get $v))
    (loop $count
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (local.set $t (i64.div_u (local.get $t) (i64.const 10)))
      (br_if $count (i64.ne (local.get $t) (i64.const 0))))
    (local.set $i (local.get $n))
    (loop $digits
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (i32.const 256) (local.get $i))
                  (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digits (local.get $i)))
    (local.get $n))

  ;; echo: the input, copied through guest memory
  (func (export "echo") (result i32)
    (call $output (global.get $buf) (call $read_input (global.get $buf)))
    (i32.const 0))

  ;; count_vowels: decimal count of ASCII aeiouAEIOU in the input
  (func (export "count_vowels") (result i32)
    (local $n i32) (local $i i32) (local $c i32) (local $count i64)
    (local.set $n (call $read_input (global.get $buf)))
    (block $done
      (loop $scan
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $c (i32.or (i32.load8_u (i32.add (global.get $buf) (local.get $i)))
                              (i32.const 0x20)))
        (if (i32.or (i32.or (i32.eq (local.get $c) (i32.const 97)) (i32.eq (local.get $c) (i32.const 101)))
                    (i32.or (i32.or (i32.eq (local.get $c) (i32.const 105)) (i32.eq (local.get $c) (i32.const 111)))
                            (i32.eq (local.get $c) (i32.const 117))))
          (then (local.set $count (i64.add (local.get $count) (i64.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (call $output (i32.const 256) (call $decimal (local.get $count)))
    (i32.const 0))

  ;; config: the value of the config key named by the input (empty when unset)
  (func (export "config") (result i32)
    (local $v i64)
    (local.set $v (call $config_get (call $to_block (global.get $buf) (call $read_input (global.get $buf)))))
    (if (i64.ne (local.get $v) (i64.const 0))
      (then (call $output_set (local.get $v) (call $length (local.get $v)))))
    (i32.const 0))

  ;; count: a var "n" kept by the host across calls on one instance; returns n (decimal).
  ;; (Hosts free the blocks handed to var_get / var_set, so each call gets a fresh key.)
  (func (export "count") (result i32)
    (local $v i64) (local $n i64) (local $blk i64)
    (local.set $v (call $var_get (call $to_block (i32.const 32) (i32.const 1))))
    (if (i64.eq (call $length (local.get $v)) (i64.const 8))
      (then (local.set $n (call $load_u64 (local.get $v)))))
    (local.set $n (i64.add (local.get $n) (i64.const 1)))
    (local.set $blk (call $alloc (i64.const 8)))
    (call $store_u64 (local.get $blk) (local.get $n))
    (call $var_set (call $to_block (i32.const 32) (i32.const 1)) (local.get $blk))
    (call $output (i32.const 256) (call $decimal (local.get $n)))
    (i32.const 0))

  ;; fetch: GET the URL given as input; output "<status> <body>"
  (func (export "fetch") (result i32)
    (local $n i32) (local $body i64) (local $d i32) (local $len i32) (local $i i32)
    ;; request JSON at 1024: prefix, URL, suffix
    (memory.copy (i32.const 1024) (i32.const 48) (i32.const 23))
    (local.set $n (call $read_input (i32.const 1047)))
    (memory.copy (i32.add (i32.const 1047) (local.get $n)) (i32.const 80) (i32.const 2))
    (local.set $body (call $http_request (call $to_block (i32.const 1024) (i32.add (local.get $n) (i32.const 25)))
                                        (i64.const 0)))
    (local.set $d (call $decimal (i64.extend_i32_u (call $http_status_code))))
    (i32.store8 (i32.add (i32.const 256) (local.get $d)) (i32.const 32))
    (local.set $len (i32.wrap_i64 (call $length (local.get $body))))
    (block $done
      (loop $copy
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (i32.store8 (i32.add (i32.add (i32.const 257) (local.get $d)) (local.get $i))
                    (call $load_u8 (i64.add (local.get $body) (i64.extend_i32_u (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $copy)))
    (call $output (i32.const 256) (i32.add (i32.add (local.get $d) (i32.const 1)) (local.get $len)))
    (i32.const 0))

  ;; fail: error_set("bad input: <input>") and a non-zero return
  (func (export "fail") (result i32)
    (local $n i32)
    (memory.copy (i32.const 2048) (i32.const 16) (i32.const 11))
    (local.set $n (call $read_input (i32.const 2059)))
    (call $error_set (call $to_block (i32.const 2048) (i32.add (local.get $n) (i32.const 11))))
    (i32.const 1))

  ;; log: the input as one info line; empty output
  (func (export "log") (result i32)
    (call $log_info (call $to_block (global.get $buf) (call $read_input (global.get $buf))))
    (i32.const 0))

  (func (export "trap") (result i32) unreachable)

  (func (export "spin") (result i32) (loop $forever (br $forever)) (i32.const 0))

  ;; a handler without a result
  (func (export "hello") (call $output (i32.const 96) (i32.const 29)))
)
