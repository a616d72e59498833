;; passthrough.wat - the built-in wasmgate function for a bare ONNX model.
;;
;; When a user pushes a plain .onnx file, the gateway pairs it with this module and pushes the model under the
;; alias "model". The module implements the function ABI of guest_modules/ABI.md with no libc and no WASI:
;;
;;   alloc(size) -> ptr     a bump allocator that starts over at every call (the host serves one request at a
;;                          time, and by the next alloc the previous request and response are dead), 8-byte
;;                          aligned, growing memory as needed; 0 when memory cannot grow.
;;   handle(ptr, len) -> i64
;;                          1. validates the WGT1 request (header, magic, every entry inside [ptr, ptr+len),
;;                             ndim <= 8, input dtypes 0..5); a malformed one is status 1 with a short message;
;;                          2. on first use, load_by_name("model") and init_execution_context (cached in
;;                             globals for the life of the instance); failure is status 2;
;;                          3. set_input(ctx, i, tensor) for every input i, with the wasi-nn tensor pointing at
;;                             the request's dims and data in place (dtype codes 0..5 are wasi-nn tensor_types);
;;                          4. compute;
;;                          5. builds the response: for every output spec j of the request, an entry with the
;;                             spec's name, dtype and ndim, get_output(ctx, j) written straight into the entry's
;;                             data area (on too_large, memory grows, doubling then smaller steps, and the call
;;                             is retried until memory.grow fails), then wasmgate_nn.get_output_dims(ctx, j)
;;                             written straight into the entry's dims area: the output's actual dims, so no dim
;;                             is left unknown, however many the graph leaves open (a transformer's [batch,
;;                             sequence, hidden]). A graph output's rank is fixed and the spec's ndim is that
;;                             rank, so the area fits; an output of another rank is status 2.
;;                          Any wasi-nn errno is status 2 with "wasi-nn <call> failed: <errno name>" (or
;;                          "wasmgate_nn get_output_dims failed: ..."), except set_input's invalid_argument (the
;;                          tensor does not fit the model), which is status 1.
;;
;; The result is packed as ABI.md says: bits 0-31 pointer, bits 32-61 length, bits 62-63 status.
;;
;; Memory map (page 0 is static; the heap starts at 4096):
;;      0  u32  graph handle out-pointer (load_by_name)
;;      4  u32  context handle out-pointer (init_execution_context)
;;      8  u32  bytes-written out-pointer (get_output)
;;     12  u32  ndim out-pointer (get_output_dims)
;;     16  wasi-nn tensor, 20 bytes: dims_ptr@0 dims_len@4 type@8 (u8 + 3 zero bytes) data_ptr@12 data_len@16
;;     48  "model"
;;     64  static messages (see the data segments)
;;   1024  errno names, one per 24-byte slot (0..8, and 9 = "unknown")
;;   1280  errno name lengths, u32 x 10
;;   2048  buffer where error messages with an errno name are assembled (256 bytes)
;;   4096  heap: the request at 4096, the response right after it
(module
  (import "wasi_ephemeral_nn" "load_by_name"
    (func $nn_load_by_name (param $name_ptr i32) (param $name_len i32) (param $graph_out i32) (result i32)))
  (import "wasi_ephemeral_nn" "init_execution_context"
    (func $nn_init_execution_context (param $graph i32) (param $ctx_out i32) (result i32)))
  (import "wasi_ephemeral_nn" "set_input"
    (func $nn_set_input (param $ctx i32) (param $index i32) (param $tensor i32) (result i32)))
  (import "wasi_ephemeral_nn" "compute"
    (func $nn_compute (param $ctx i32) (result i32)))
  (import "wasi_ephemeral_nn" "get_output"
    (func $nn_get_output (param $ctx i32) (param $index i32) (param $out i32) (param $out_max i32)
                         (param $written_out i32) (result i32)))
  ;; wasmgate's extension (guest_modules/ABI.md "WASI-NN"): an output's actual dims, which witx get_output
  ;; does not give
  (import "wasmgate_nn" "get_output_dims"
    (func $nn_get_output_dims (param $ctx i32) (param $index i32) (param $dims i32) (param $dims_max i32)
                              (param $ndim_out i32) (result i32)))

  (memory (export "memory") 1)

  ;; ---- state -------------------------------------------------------------------------------------------
  (global $heap_top (mut i32) (i32.const 4096))   ;; first free heap byte (8-aligned)
  (global $graph_ready (mut i32) (i32.const 0))
  (global $ctx_ready (mut i32) (i32.const 0))
  (global $graph (mut i32) (i32.const 0))
  (global $ctx (mut i32) (i32.const 0))

  ;; ---- static data ---------------------------------------------------------------------------------------
  (data (i32.const 48) "model")
  ;; messages: address, length
  (data (i32.const 64)  "malformed request: shorter than the 16-byte header")           ;; 64, 50
  (data (i32.const 128) "malformed request: bad magic (expected \"WGT1\")")             ;; 128, 46
  (data (i32.const 192) "malformed request: a tensor has more than 8 dims")            ;; 192, 48
  (data (i32.const 256) "malformed request: a tensor runs past the end of the buffer") ;; 256, 59
  (data (i32.const 320) "unsupported datatype")                                         ;; 320, 20
  (data (i32.const 352) "wasi-nn load_by_name failed")                                  ;; 352, 27
  (data (i32.const 384) "wasi-nn init_execution_context failed")                        ;; 384, 37
  (data (i32.const 432) "wasi-nn set_input failed")                                     ;; 432, 24
  (data (i32.const 464) "wasi-nn compute failed")                                       ;; 464, 22
  (data (i32.const 496) "wasi-nn get_output failed")                                    ;; 496, 25
  (data (i32.const 528) "out of memory while building the response")                   ;; 528, 41
  (data (i32.const 576) "the response would be larger than 1 GiB")                     ;; 576, 39
  (data (i32.const 624) "wasi-nn get_output wrote more bytes than the buffer holds")   ;; 624, 57
  (data (i32.const 688) "wasmgate_nn get_output_dims failed")                           ;; 688, 34
  (data (i32.const 736) "a model output has a different rank than its output spec")    ;; 736, 56
  ;; nn_errno names, slot i at 1024 + 24 * i
  (data (i32.const 1024) "success")
  (data (i32.const 1048) "invalid_argument")
  (data (i32.const 1072) "invalid_encoding")
  (data (i32.const 1096) "missing_memory")
  (data (i32.const 1120) "busy")
  (data (i32.const 1144) "runtime_error")
  (data (i32.const 1168) "unsupported_operation")
  (data (i32.const 1192) "too_large")
  (data (i32.const 1216) "not_found")
  (data (i32.const 1240) "unknown")
  ;; their lengths: 7 16 16 14 4 13 21 9 9 7
  (data (i32.const 1280)
    "\07\00\00\00\10\00\00\00\10\00\00\00\0e\00\00\00\04\00\00\00"
    "\0d\00\00\00\15\00\00\00\09\00\00\00\09\00\00\00\07\00\00\00")

  ;; ---- helpers -------------------------------------------------------------------------------------------

  ;; The packed result of `handle`: ptr | len << 32 | status << 62.
  (func $pack (param $ptr i32) (param $len i32) (param $status i32) (result i64)
    (i64.or
      (i64.or
        (i64.extend_i32_u (local.get $ptr))
        (i64.shl (i64.extend_i32_u (i32.and (local.get $len) (i32.const 0x3fffffff))) (i64.const 32)))
      (i64.shl (i64.extend_i32_u (local.get $status)) (i64.const 62))))

  ;; Status 1 with a static message.
  (func $invalid (param $msg i32) (param $len i32) (result i64)
    (call $pack (local.get $msg) (local.get $len) (i32.const 1)))

  ;; Status 2 with a static message.
  (func $failed (param $msg i32) (param $len i32) (result i64)
    (call $pack (local.get $msg) (local.get $len) (i32.const 2)))

  ;; `status` with "<msg>: <errno name>", assembled at 2048.
  (func $nn_fail (param $status i32) (param $msg i32) (param $len i32) (param $errno i32) (result i64)
    (local $e i32) (local $name_len i32)
    (memory.copy (i32.const 2048) (local.get $msg) (local.get $len))
    ;; ": " (0x3a 0x20, stored little-endian)
    (i32.store16 (i32.add (i32.const 2048) (local.get $len)) (i32.const 0x203a))
    (local.set $e (select (local.get $errno) (i32.const 9) (i32.le_u (local.get $errno) (i32.const 8))))
    (local.set $name_len (i32.load (i32.add (i32.const 1280) (i32.shl (local.get $e) (i32.const 2)))))
    (memory.copy
      (i32.add (i32.const 2050) (local.get $len))
      (i32.add (i32.const 1024) (i32.mul (local.get $e) (i32.const 24)))
      (local.get $name_len))
    (call $pack (i32.const 2048) (i32.add (i32.add (local.get $len) (i32.const 2)) (local.get $name_len))
                (local.get $status)))

  ;; x rounded up to a multiple of 8 (i64, so it cannot wrap).
  (func $pad8 (param $x i64) (result i64)
    (i64.and (i64.add (local.get $x) (i64.const 7)) (i64.const -8)))

  ;; Bytes of linear memory now.
  (func $mem_bytes (result i64)
    (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))

  ;; Make [0, end) addressable, growing memory if needed. 1 on success, 0 if end >= 4 GiB or memory.grow
  ;; fails. (end < 2^32 keeps every address that ends up below it representable as an i32.)
  (func $ensure (param $end i64) (result i32)
    (local $pages i64)
    (if (i64.ge_u (local.get $end) (i64.const 0x100000000)) (then (return (i32.const 0))))
    (if (i64.le_u (local.get $end) (call $mem_bytes)) (then (return (i32.const 1))))
    (local.set $pages (i64.shr_u (i64.add (local.get $end) (i64.const 0xffff)) (i64.const 16)))
    (i32.ne
      (memory.grow (i32.sub (i32.wrap_i64 (local.get $pages)) (memory.size)))
      (i32.const -1)))

  ;; Grow memory by as much as it will take, starting at doubling and halving the step down to one page.
  ;; 1 if it grew, 0 if not even one more page is available.
  (func $grow_more (result i32)
    (local $step i32)
    (local.set $step (memory.size))
    (block $done
      (loop $try
        (br_if $done (i32.eqz (local.get $step)))
        (if (i32.ne (memory.grow (local.get $step)) (i32.const -1)) (then (return (i32.const 1))))
        (local.set $step (i32.shr_u (local.get $step) (i32.const 1)))
        (br $try)))
    (i32.const 0))

  ;; The offset of the entry after the one at `off` in the request [base, base+len): checks that the entry's
  ;; header fits, ndim <= 8, and that its dims, name and data end within len (the padding after the data may
  ;; run past the end; the next call's header check catches that). -1: runs past the end; -2: ndim > 8.
  (func $entry_next (param $base i32) (param $len i32) (param $off i64) (result i64)
    (local $e i32) (local $ndim i32) (local $data_at i64)
    (if (i64.gt_u (i64.add (local.get $off) (i64.const 16)) (i64.extend_i32_u (local.get $len)))
      (then (return (i64.const -1))))
    (local.set $e (i32.add (local.get $base) (i32.wrap_i64 (local.get $off))))
    (local.set $ndim (i32.load offset=8 (local.get $e)))
    (if (i32.gt_u (local.get $ndim) (i32.const 8)) (then (return (i64.const -2))))
    ;; data_at = off + 16 + pad8(4 * ndim) + pad8(name_len)
    (local.set $data_at
      (i64.add
        (i64.add (local.get $off) (i64.const 16))
        (i64.add
          (call $pad8 (i64.extend_i32_u (i32.shl (local.get $ndim) (i32.const 2))))
          (call $pad8 (i64.extend_i32_u (i32.load (local.get $e)))))))
    ;; data_at + data_len must be within len
    (if (i64.gt_u (i64.add (local.get $data_at) (i64.extend_i32_u (i32.load offset=12 (local.get $e))))
                  (i64.extend_i32_u (local.get $len)))
      (then (return (i64.const -1))))
    (i64.add (local.get $data_at) (call $pad8 (i64.extend_i32_u (i32.load offset=12 (local.get $e))))))

  ;; Load the model and make the execution context, once per instance. 0 on success, else a packed status 2.
  (func $ensure_model (result i64)
    (local $err i32)
    (if (i32.eqz (global.get $graph_ready))
      (then
        (local.set $err (call $nn_load_by_name (i32.const 48) (i32.const 5) (i32.const 0)))
        (if (local.get $err)
          (then (return (call $nn_fail (i32.const 2) (i32.const 352) (i32.const 27) (local.get $err)))))
        (global.set $graph (i32.load (i32.const 0)))
        (global.set $graph_ready (i32.const 1))))
    (if (i32.eqz (global.get $ctx_ready))
      (then
        (local.set $err (call $nn_init_execution_context (global.get $graph) (i32.const 4)))
        (if (local.get $err)
          (then (return (call $nn_fail (i32.const 2) (i32.const 384) (i32.const 37) (local.get $err)))))
        (global.set $ctx (i32.load (i32.const 4)))
        (global.set $ctx_ready (i32.const 1))))
    (i64.const 0))

  ;; ---- exports -------------------------------------------------------------------------------------------

  ;; alloc(size): the heap starts over at 4096 (the previous request and response are dead by now).
  (func (export "alloc") (param $size i32) (result i32)
    (local $end i64)
    (global.set $heap_top (i32.const 4096))
    (local.set $end (call $pad8 (i64.add (i64.const 4096) (i64.extend_i32_u (local.get $size)))))
    (if (i32.eqz (call $ensure (local.get $end))) (then (return (i32.const 0))))
    (global.set $heap_top (i32.wrap_i64 (local.get $end)))
    (i32.const 4096))

  (func (export "handle") (param $ptr i32) (param $len i32) (result i64)
    (local $n_in i32) (local $n_out i32) (local $total i64) (local $i i64)
    (local $off i64) (local $next i64) (local $spec_off i64)
    (local $e i32) (local $ndim i32) (local $name_len i32) (local $dtype i32)
    (local $dims_sz i32) (local $err i32) (local $r i64)
    (local $resp i64) (local $pos i64) (local $p i32) (local $data i64) (local $avail i64)
    (local $written i32) (local $end i64)

    ;; -- 1. validate ------------------------------------------------------------------------------------
    ;; the buffer itself must lie in memory (the host wrote it there; this guards a confused host)
    (if (i64.gt_u (i64.add (i64.extend_i32_u (local.get $ptr)) (i64.extend_i32_u (local.get $len)))
                  (call $mem_bytes))
      (then (return (call $invalid (i32.const 256) (i32.const 59)))))
    (if (i32.lt_u (local.get $len) (i32.const 16))
      (then (return (call $invalid (i32.const 64) (i32.const 50)))))
    (if (i32.ne (i32.load (local.get $ptr)) (i32.const 0x31544757))  ;; "WGT1"
      (then (return (call $invalid (i32.const 128) (i32.const 46)))))
    (local.set $n_in (i32.load offset=4 (local.get $ptr)))
    (local.set $n_out (i32.load offset=8 (local.get $ptr)))
    (local.set $total (i64.add (i64.extend_i32_u (local.get $n_in)) (i64.extend_i32_u (local.get $n_out))))
    ;; walk every entry; each is at least 16 bytes and must fit in len, so the loop is bounded by len / 16
    (local.set $off (i64.const 16))
    (local.set $i (i64.const 0))
    (block $walked
      (loop $walk
        (br_if $walked (i64.ge_u (local.get $i) (local.get $total)))
        (if (i64.eq (local.get $i) (i64.extend_i32_u (local.get $n_in)))
          (then (local.set $spec_off (local.get $off))))
        (local.set $next (call $entry_next (local.get $ptr) (local.get $len) (local.get $off)))
        (if (i64.eq (local.get $next) (i64.const -1))
          (then (return (call $invalid (i32.const 256) (i32.const 59)))))
        (if (i64.eq (local.get $next) (i64.const -2))
          (then (return (call $invalid (i32.const 192) (i32.const 48)))))
        ;; an input's dtype must be a wasi-nn tensor_type (0..5)
        (if (i64.lt_u (local.get $i) (i64.extend_i32_u (local.get $n_in)))
          (then
            (if (i32.gt_u (i32.load offset=4 (i32.add (local.get $ptr) (i32.wrap_i64 (local.get $off))))
                          (i32.const 5))
              (then (return (call $invalid (i32.const 320) (i32.const 20)))))))
        (local.set $off (local.get $next))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $walk)))
    (if (i64.eq (local.get $total) (i64.extend_i32_u (local.get $n_in)))
      (then (local.set $spec_off (local.get $off))))   ;; no specs: unused, but defined

    ;; -- 2. the model, once -------------------------------------------------------------------------------
    (local.set $r (call $ensure_model))
    (if (i64.ne (local.get $r) (i64.const 0)) (then (return (local.get $r))))

    ;; -- 3. inputs, in place ----------------------------------------------------------------------------
    (local.set $off (i64.const 16))
    (local.set $i (i64.const 0))
    (block $inputs_set
      (loop $input
        (br_if $inputs_set (i64.ge_u (local.get $i) (i64.extend_i32_u (local.get $n_in))))
        (local.set $e (i32.add (local.get $ptr) (i32.wrap_i64 (local.get $off))))
        (local.set $name_len (i32.load (local.get $e)))
        (local.set $ndim (i32.load offset=8 (local.get $e)))
        (local.set $dims_sz (i32.and (i32.add (i32.shl (local.get $ndim) (i32.const 2)) (i32.const 7))
                                     (i32.const -8)))
        ;; the wasi-nn tensor at 16
        (i32.store (i32.const 16) (i32.add (local.get $e) (i32.const 16)))                  ;; dims_ptr
        (i32.store (i32.const 20) (local.get $ndim))                                         ;; dims_len
        (i32.store (i32.const 24) (i32.load offset=4 (local.get $e)))  ;; type (0..5) + 3 zero pad bytes
        (i32.store (i32.const 28)                                                            ;; data_ptr
          (i32.add (i32.add (i32.add (local.get $e) (i32.const 16)) (local.get $dims_sz))
                   (i32.wrap_i64 (call $pad8 (i64.extend_i32_u (local.get $name_len))))))
        (i32.store (i32.const 32) (i32.load offset=12 (local.get $e)))                      ;; data_len
        (local.set $err (call $nn_set_input (global.get $ctx) (i32.wrap_i64 (local.get $i)) (i32.const 16)))
        (if (i32.eq (local.get $err) (i32.const 1))   ;; invalid_argument: the caller's tensor does not fit
          (then (return (call $nn_fail (i32.const 1) (i32.const 432) (i32.const 24) (local.get $err)))))
        (if (local.get $err)
          (then (return (call $nn_fail (i32.const 2) (i32.const 432) (i32.const 24) (local.get $err)))))
        (local.set $off (call $entry_next (local.get $ptr) (local.get $len) (local.get $off)))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $input)))

    ;; -- 4. compute -------------------------------------------------------------------------------------
    (local.set $err (call $nn_compute (global.get $ctx)))
    (if (local.get $err)
      (then (return (call $nn_fail (i32.const 2) (i32.const 464) (i32.const 22) (local.get $err)))))

    ;; -- 5. the response, after the request (and after anything the heap already holds) -------------------
    (local.set $resp (i64.extend_i32_u (global.get $heap_top)))
    (local.set $end (call $pad8 (i64.add (i64.extend_i32_u (local.get $ptr)) (i64.extend_i32_u (local.get $len)))))
    (if (i64.gt_u (local.get $end) (local.get $resp)) (then (local.set $resp (local.get $end))))
    (if (i32.eqz (call $ensure (i64.add (local.get $resp) (i64.const 16))))
      (then (return (call $failed (i32.const 528) (i32.const 41)))))
    (local.set $p (i32.wrap_i64 (local.get $resp)))
    (i32.store (local.get $p) (i32.const 0x31544757))          ;; magic
    (i32.store offset=4 (local.get $p) (local.get $n_out))     ;; n_inputs: the result tensors
    (i64.store offset=8 (local.get $p) (i64.const 0))          ;; n_outputs = 0, reserved = 0
    (local.set $pos (i64.add (local.get $resp) (i64.const 16)))

    (local.set $off (local.get $spec_off))
    (local.set $i (i64.const 0))
    (block $outputs_done
      (loop $output
        (br_if $outputs_done (i64.ge_u (local.get $i) (i64.extend_i32_u (local.get $n_out))))
        (local.set $e (i32.add (local.get $ptr) (i32.wrap_i64 (local.get $off))))
        (local.set $name_len (i32.load (local.get $e)))
        (local.set $ndim (i32.load offset=8 (local.get $e)))
        (local.set $dims_sz (i32.and (i32.add (i32.shl (local.get $ndim) (i32.const 2)) (i32.const 7))
                                     (i32.const -8)))
        ;; data starts after the entry header, the padded dims and the padded name
        (local.set $data
          (i64.add (i64.add (local.get $pos) (i64.const 16))
                   (i64.add (i64.extend_i32_u (local.get $dims_sz))
                            (call $pad8 (i64.extend_i32_u (local.get $name_len))))))
        (if (i32.eqz (call $ensure (local.get $data)))
          (then (return (call $failed (i32.const 528) (i32.const 41)))))
        (local.set $p (i32.wrap_i64 (local.get $pos)))
        ;; entry header: name_len, dtype, ndim copied from the spec; data_len filled in below
        (i32.store (local.get $p) (local.get $name_len))
        (i32.store offset=4 (local.get $p) (i32.load offset=4 (local.get $e)))
        (i32.store offset=8 (local.get $p) (local.get $ndim))
        (i32.store offset=12 (local.get $p) (i32.const 0))
        ;; zero the padded dims and name, then copy the name (the dims come from get_output_dims below)
        (memory.fill (i32.add (local.get $p) (i32.const 16)) (i32.const 0)
                     (i32.sub (i32.wrap_i64 (local.get $data)) (i32.add (local.get $p) (i32.const 16))))
        (memory.copy (i32.add (i32.add (local.get $p) (i32.const 16)) (local.get $dims_sz))
                     (i32.add (i32.add (local.get $e) (i32.const 16)) (local.get $dims_sz))
                     (local.get $name_len))
        ;; get_output straight into the response, into all the memory there is after `data`
        (block $got
          (loop $retry
            (local.set $avail (i64.sub (call $mem_bytes) (local.get $data)))
            (if (i64.gt_u (local.get $avail) (i64.const 0xffffffff))
              (then (local.set $avail (i64.const 0xffffffff))))
            (local.set $err
              (call $nn_get_output (global.get $ctx) (i32.wrap_i64 (local.get $i))
                                   (i32.wrap_i64 (local.get $data)) (i32.wrap_i64 (local.get $avail))
                                   (i32.const 8)))
            (br_if $got (i32.eqz (local.get $err)))
            ;; too_large: grow and retry, until memory cannot grow any more
            (if (i32.and (i32.eq (local.get $err) (i32.const 7)) (call $grow_more))
              (then (br $retry)))
            (return (call $nn_fail (i32.const 2) (i32.const 496) (i32.const 25) (local.get $err)))))
        (local.set $written (i32.load (i32.const 8)))
        (if (i64.gt_u (i64.extend_i32_u (local.get $written)) (local.get $avail))
          (then (return (call $failed (i32.const 624) (i32.const 57)))))
        (i32.store offset=12 (local.get $p) (local.get $written))
        ;; the actual dims, into the entry's dims area of exactly the spec's ndim entries, and the rank at 12:
        ;; too_large with a larger rank, or success with a smaller one, is an output not of the spec's rank
        (local.set $err
          (call $nn_get_output_dims (global.get $ctx) (i32.wrap_i64 (local.get $i))
                                    (i32.add (local.get $p) (i32.const 16)) (local.get $ndim) (i32.const 12)))
        (if (i32.and (i32.eq (local.get $err) (i32.const 7))
                     (i32.gt_u (i32.load (i32.const 12)) (local.get $ndim)))
          (then (return (call $failed (i32.const 736) (i32.const 56)))))
        (if (local.get $err)
          (then (return (call $nn_fail (i32.const 2) (i32.const 688) (i32.const 34) (local.get $err)))))
        (if (i32.ne (i32.load (i32.const 12)) (local.get $ndim))
          (then (return (call $failed (i32.const 736) (i32.const 56)))))
        ;; zero padding to 8 after the data
        (local.set $end (call $pad8 (i64.add (local.get $data) (i64.extend_i32_u (local.get $written)))))
        (if (i32.eqz (call $ensure (local.get $end)))
          (then (return (call $failed (i32.const 528) (i32.const 41)))))
        (memory.fill (i32.wrap_i64 (i64.add (local.get $data) (i64.extend_i32_u (local.get $written))))
                     (i32.const 0)
                     (i32.wrap_i64 (i64.sub (local.get $end)
                                            (i64.add (local.get $data) (i64.extend_i32_u (local.get $written))))))
        (local.set $pos (local.get $end))
        (local.set $off (call $entry_next (local.get $ptr) (local.get $len) (local.get $off)))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $output)))

    ;; the length field has 30 bits
    (if (i64.gt_u (i64.sub (local.get $pos) (local.get $resp)) (i64.const 0x3fffffff))
      (then (return (call $failed (i32.const 576) (i32.const 39)))))
    (global.set $heap_top (i32.wrap_i64 (local.get $pos)))
    (call $pack (i32.wrap_i64 (local.get $resp)) (i32.wrap_i64 (i64.sub (local.get $pos) (local.get $resp)))
                (i32.const 0)))
)
