;; enrich - forge/1 example plugin for triggers (docs/triggers.md).
;;
;;   enrich(json object) -> the same object with two fields added:
;;       "enriched_by":"forgeone" and "subject":"<the event's subject>"
;;   e.g. {"id":7,"total":12.5} on orders.eu.created ->
;;        {"id":7,"total":12.5,"enriched_by":"forgeone","subject":"orders.eu.created"}
;;
;; Input that is not a JSON object (does not end with '}') is rejected for good
;; (forge.reject): a trigger sends it to its dead letter at once, without retries.
;; Called outside a trigger (a plain invoke) the subject is "".
;;
;; Memory: a bump heap reset at the first alloc of each call. The host calls
;; alloc for the input first, then (inside forge.event_subject) for the subject;
;; the handler marks the call finished just before returning, so the next call's
;; first alloc starts the heap afresh. The output stays valid until then.
(module
  (import "forge" "reject" (func $reject (param i32 i32)))
  (import "forge" "event_subject" (func $event_subject (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "enrich: input is not a JSON object")   ;; 34 bytes
  (data (i32.const 64) "\"enriched_by\":\"forgeone\",\"subject\":\"") ;; 36 bytes
  (data (i32.const 128) "\"}")                                  ;; 2 bytes
  (global $heap_base i32 (i32.const 1024))
  (global $top (mut i32) (i32.const 1024))
  (global $fresh (mut i32) (i32.const 1))

  (func $alloc (export "alloc") (param $size i32) (result i32)
    (local $ptr i32) (local $end i32)
    (if (global.get $fresh)
      (then (global.set $top (global.get $heap_base)) (global.set $fresh (i32.const 0))))
    (if (i32.gt_u (local.get $size) (i32.const 0x10000000)) (then (return (i32.const 0))))
    (local.set $ptr (i32.and (i32.add (global.get $top) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (if (i64.gt_u (i64.extend_i32_u (local.get $end))
                  (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
      (then
        (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get $size) (i32.const 16))
                                          (i32.const 1)))
                    (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $top (local.get $end))
    (local.get $ptr))

  (func $is_space (param $c i32) (result i32)
    (i32.or (i32.or (i32.eq (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 9)))
            (i32.or (i32.eq (local.get $c) (i32.const 10)) (i32.eq (local.get $c) (i32.const 13)))))

  ;; index of the last non-space byte before $end, or -1
  (func $last_non_space (param $p i32) (param $end i32) (result i32)
    (local $i i32)
    (local.set $i (local.get $end))
    (block $done
      (loop $back
        (br_if $done (i32.le_s (local.get $i) (i32.const 0)))
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (br_if $back (call $is_space (i32.load8_u (i32.add (local.get $p) (local.get $i)))))
        (return (local.get $i))))
    (i32.const -1))

  (func (export "enrich") (param $p i32) (param $n i32) (result i64)
    (local $close i32) (local $prev i32) (local $comma i32) (local $subj i64)
    (local $sp i32) (local $sl i32) (local $out i32) (local $len i32) (local $at i32)
    (local.set $close (call $last_non_space (local.get $p) (local.get $n)))
    (if (i32.or (i32.lt_s (local.get $close) (i32.const 0))
                (i32.ne (i32.load8_u (i32.add (local.get $p) (local.get $close))) (i32.const 125)))
      (then
        (call $reject (i32.const 0) (i32.const 34))
        (global.set $fresh (i32.const 1))
        (return (i64.const 0))))
    ;; a comma unless the object is empty ('{' right before the '}')
    (local.set $prev (call $last_non_space (local.get $p) (local.get $close)))
    (local.set $comma (i32.const 1))
    (if (i32.ge_s (local.get $prev) (i32.const 0))
      (then (if (i32.eq (i32.load8_u (i32.add (local.get $p) (local.get $prev))) (i32.const 123))
        (then (local.set $comma (i32.const 0))))))
    (local.set $subj (call $event_subject))
    (if (i64.ge_s (local.get $subj) (i64.const 0))
      (then
        (local.set $sp (i32.wrap_i64 (i64.shr_u (local.get $subj) (i64.const 32))))
        (local.set $sl (i32.wrap_i64 (local.get $subj)))))
    (local.set $len (i32.add (i32.add (local.get $close) (local.get $comma))
                             (i32.add (i32.add (i32.const 36) (local.get $sl)) (i32.const 2))))
    (local.set $out (call $alloc (local.get $len)))
    (if (i32.eqz (local.get $out)) (then (unreachable)))
    (memory.copy (local.get $out) (local.get $p) (local.get $close))
    (local.set $at (i32.add (local.get $out) (local.get $close)))
    (if (local.get $comma)
      (then (i32.store8 (local.get $at) (i32.const 44))
            (local.set $at (i32.add (local.get $at) (i32.const 1)))))
    (memory.copy (local.get $at) (i32.const 64) (i32.const 36))
    (local.set $at (i32.add (local.get $at) (i32.const 36)))
    (memory.copy (local.get $at) (local.get $sp) (local.get $sl))
    (local.set $at (i32.add (local.get $at) (local.get $sl)))
    (memory.copy (local.get $at) (i32.const 128) (i32.const 2))
    (global.set $fresh (i32.const 1))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
)
