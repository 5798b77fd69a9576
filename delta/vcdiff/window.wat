;; The VCDIFF decoder's inner loops: decoding a window's instructions into a table (`scan`) and
;; writing the target bytes from that table (`execute`). Built into window-wasm.ts by
;; `npm run build:wasm`; decoder.ts drives it (WindowDecoder) and keeps everything else: the
;; stream, headers, source reads, range merging, checksums and the error messages.
;;
;; Why WebAssembly: V8 compiles a module before its first call, where these loops in TypeScript ran
;; interpreted through a fresh process's first window (half of a 13 MB decode's time).
;;
;; The memory is the caller's. Below DELTA_AT lie the code table (copied in by the caller), the
;; address caches and one part's tables; from DELTA_AT the caller places the window's three
;; sections, then its target slots and staging area. Every position passed in or stored is an
;; absolute index into the memory, except segment addresses (64-bit, up to 2^53).
;;
;; Errors: `scan` returns a non-zero kind and leaves where (errAt, an index into the memory) and the
;; values the message needs (errA, errB, errC) in globals; decoder.ts words the message. Every read
;; is checked against its section's end before it happens, so no input traps.
(module
  (import "env" "memory" (memory 1))

  ;; Layout of the fixed region. The code table: type, size and mode of each opcode's first
  ;; instruction (256 bytes each), then the same for its second.
  (global $CODE (export "CODE_TABLE") i32 (i32.const 0))
  (global $NEAR i32 (i32.const 1536)) ;; 4 × i64
  (global $SAME i32 (i32.const 1568)) ;; 3 × 256 × i64
  ;; One part's decoded instructions: what to do (u8), how many bytes (i32), an argument (i64).
  (global $OPS i32 (i32.const 8192))
  (global $SIZES i32 (i32.const 40960))
  (global $ARGS i32 (i32.const 172032))
  ;; Tables decoder.ts reads and sorts (f64, as JavaScript numbers): the staged source ranges and
  ;; where each sits in the staging area, and the long COPYs read straight into the target.
  (global $RANGE_START (export "RANGE_START") i32 (i32.const 434176))
  (global $RANGE_END (export "RANGE_END") i32 (i32.const 696320))
  (global $RANGE_AT (export "RANGE_AT") i32 (i32.const 958464))
  (global $DIRECT_FROM (export "DIRECT_FROM") i32 (i32.const 1220608))
  (global $DIRECT_TO (export "DIRECT_TO") i32 (i32.const 1482752))
  (global $DIRECT_LENGTH (export "DIRECT_LENGTH") i32 (i32.const 1744896))
  (global $DELTA_AT (export "DELTA_AT") i32 (i32.const 2007040))

  ;; Limits shared with decoder.ts, which checks them against its own when it loads the module.
  (global $MAX_PART_INSTRUCTIONS (export "MAX_PART_INSTRUCTIONS") i32 (i32.const 32768))
  (global $STAGE_PART (export "STAGE_PART") i32 (i32.const 1048576))
  (global $DIRECT_READ (export "DIRECT_READ") i32 (i32.const 65536))
  (global $SOURCE_READ_GAP (export "SOURCE_READ_GAP") i32 (i32.const 65536))
  (global $SOURCE_GAP_BUDGET (export "SOURCE_GAP_BUDGET") i32 (i32.const 1048576))
  ;; Number.MAX_SAFE_INTEGER: varints above it are refused, as in decoder.ts.
  (global $MAX_INTEGER i64 (i64.const 9007199254740991))

  ;; Instruction types (RFC 3284) and address modes.
  (global $NOOP i32 (i32.const 0))
  (global $ADD i32 (i32.const 1))
  (global $RUN i32 (i32.const 2))
  (global $MODE_SELF i32 (i32.const 0))
  (global $MODE_HERE i32 (i32.const 1))
  (global $FIRST_NEAR_MODE i32 (i32.const 2))
  (global $FIRST_SAME_MODE i32 (i32.const 6))

  ;; What a table entry does (see execute).
  (global $OP_ADD i32 (i32.const 0))
  (global $OP_RUN i32 (i32.const 1))
  (global $OP_COPY_STAGED i32 (i32.const 2))
  (global $OP_COPY_DIRECT i32 (i32.const 3))
  (global $OP_COPY_TARGET i32 (i32.const 4))

  ;; Error kinds, worded by decoder.ts.
  (global $ERR_SIZE_TRUNCATED i32 (i32.const 1))
  (global $ERR_SIZE_TOO_LARGE i32 (i32.const 2))
  (global $ERR_OVERFLOW i32 (i32.const 3))
  (global $ERR_ADD_DATA i32 (i32.const 4))
  (global $ERR_RUN_DATA i32 (i32.const 5))
  (global $ERR_ADDR_TRUNCATED i32 (i32.const 6))
  (global $ERR_ADDR_TOO_LARGE i32 (i32.const 7))
  (global $ERR_ADDR_OUTSIDE i32 (i32.const 8))

  ;; Shorter copies go byte by byte: memory.copy costs a call.
  (global $SHORT_COPY i32 (i32.const 16))

  ;; The window: section bounds and where the scan stands.
  (global $dataEnd (mut i32) (i32.const 0))
  (global $instEnd (mut i32) (i32.const 0))
  (global $addrEnd (mut i32) (i32.const 0))
  (global $segmentLength (mut i64) (i64.const 0))
  (global $targetLength (mut i32) (i32.const 0))
  (global $nextSlot (mut i32) (i32.const 0))
  (global $ip (export "ip") (mut i32) (i32.const 0))
  (global $dp (export "dp") (mut i32) (i32.const 0))
  (global $ap (export "ap") (mut i32) (i32.const 0))
  (global $tp (export "tp") (mut i32) (i32.const 0))
  ;; The part's tables.
  (global $opCount (mut i32) (i32.const 0))
  (global $rangeCount (export "rangeCount") (mut i32) (i32.const 0))
  (global $directCount (export "directCount") (mut i32) (i32.const 0))
  (global $gapBudget (mut f64) (f64.const 0))
  (global $lastRange (mut i32) (i32.const 0))
  ;; The last error.
  (global $errAt (export "errAt") (mut i32) (i32.const 0))
  (global $errA (export "errA") (mut f64) (f64.const 0))
  (global $errB (export "errB") (mut f64) (f64.const 0))
  (global $errC (export "errC") (mut f64) (f64.const 0))

  ;; Starts a window whose sections lie at [dataAt, instAt), [instAt, addrAt), [addrAt, addrEnd):
  ;; resets the address caches and the scan.
  (func (export "window")
    (param $dataAt i32) (param $instAt i32) (param $addrAt i32) (param $addrEnd i32)
    (param $segmentLength f64) (param $targetLength i32)
    ;; NEAR and SAME, which follow it: (4 + 3 × 256) × 8 bytes.
    (memory.fill (global.get $NEAR) (i32.const 0) (i32.const 6176))
    (global.set $nextSlot (i32.const 0))
    (global.set $dataEnd (local.get $instAt))
    (global.set $instEnd (local.get $addrAt))
    (global.set $addrEnd (local.get $addrEnd))
    (global.set $segmentLength (i64.trunc_f64_u (local.get $segmentLength)))
    (global.set $targetLength (local.get $targetLength))
    (global.set $ip (local.get $instAt))
    (global.set $dp (local.get $dataAt))
    (global.set $ap (local.get $addrAt))
    (global.set $tp (i32.const 0)))

  (func $fail (param $kind i32) (param $at i32) (param $a f64) (param $b f64) (param $c f64) (result i32)
    (global.set $errAt (local.get $at))
    (global.set $errA (local.get $a))
    (global.set $errB (local.get $b))
    (global.set $errC (local.get $c))
    (local.get $kind))

  ;; Appends an entry to the part's table.
  (func $entry (param $n i32) (param $op i32) (param $size i32) (param $arg i64)
    (i32.store8 (i32.add (global.get $OPS) (local.get $n)) (local.get $op))
    (i32.store (i32.add (global.get $SIZES) (i32.shl (local.get $n) (i32.const 2))) (local.get $size))
    (i64.store (i32.add (global.get $ARGS) (i32.shl (local.get $n) (i32.const 3))) (local.get $arg)))

  ;; Records that segment bytes [start, end) are needed, merged into the previous range when they
  ;; touch it or lie a small gap after it (while the gaps stay within the part's budget).
  (func $addRange (param $start f64) (param $end f64)
    (local $last i32) (local $gap f64)
    (if (i32.gt_s (global.get $rangeCount) (i32.const 0))
      (then
        (local.set $last
          (i32.shl (i32.sub (global.get $rangeCount) (i32.const 1)) (i32.const 3)))
        (if (f64.ge (local.get $start)
                    (f64.load (i32.add (global.get $RANGE_START) (local.get $last))))
          (then
            (local.set $gap
              (f64.sub (local.get $start)
                       (f64.load (i32.add (global.get $RANGE_END) (local.get $last)))))
            (if (i32.or
                  (f64.le (local.get $gap) (f64.const 0))
                  (i32.and
                    (f64.le (local.get $gap) (f64.convert_i32_u (global.get $SOURCE_READ_GAP)))
                    (f64.le (local.get $gap) (global.get $gapBudget))))
              (then
                (if (f64.gt (local.get $gap) (f64.const 0))
                  (then (global.set $gapBudget (f64.sub (global.get $gapBudget) (local.get $gap)))))
                (if (f64.gt (local.get $end)
                            (f64.load (i32.add (global.get $RANGE_END) (local.get $last))))
                  (then (f64.store (i32.add (global.get $RANGE_END) (local.get $last)) (local.get $end))))
                (return)))))))
    (local.set $last (i32.shl (global.get $rangeCount) (i32.const 3)))
    (f64.store (i32.add (global.get $RANGE_START) (local.get $last)) (local.get $start))
    (f64.store (i32.add (global.get $RANGE_END) (local.get $last)) (local.get $end))
    (global.set $rangeCount (i32.add (global.get $rangeCount) (i32.const 1))))

  ;; Records a long source COPY, read straight into the target at target position `to`.
  (func $addDirect (param $addr i64) (param $to i32) (param $length i32)
    (local $at i32)
    (local.set $at (i32.shl (global.get $directCount) (i32.const 3)))
    (f64.store (i32.add (global.get $DIRECT_FROM) (local.get $at)) (f64.convert_i64_u (local.get $addr)))
    (f64.store (i32.add (global.get $DIRECT_TO) (local.get $at)) (f64.convert_i32_u (local.get $to)))
    (f64.store (i32.add (global.get $DIRECT_LENGTH) (local.get $at)) (f64.convert_i32_u (local.get $length)))
    (global.set $directCount (i32.add (global.get $directCount) (i32.const 1))))

  ;; Validates and decodes the next part's instructions into the table: those that start within
  ;; STAGE_PART bytes of target, at most MAX_PART_INSTRUCTIONS entries, until STAGE_PART bytes of
  ;; short source COPYs are staged. Returns 0, or an error kind.
  (func (export "scan") (result i32)
    (local $ip i32) (local $dp i32) (local $ap i32) (local $tp i32)
    (local $n i32) (local $staged i32) (local $partEnd i32) (local $lastEntry i32)
    (local $codeAt i32) (local $code i32) (local $half i32) (local $column i32)
    (local $type i32) (local $mode i32) (local $b i32)
    (local $size i64) (local $size32 i32) (local $sizeAt i32)
    (local $here i64) (local $addr i64) (local $value i64) (local $addrAt i32)
    (local $fromSource i32) (local $rest i32) (local $from i64)
    (local.set $ip (global.get $ip))
    (local.set $dp (global.get $dp))
    (local.set $ap (global.get $ap))
    (local.set $tp (global.get $tp))
    (local.set $partEnd (i32.add (local.get $tp) (global.get $STAGE_PART)))
    ;; An opcode adds at most four entries: two instructions, each COPY a source and a target piece.
    (local.set $lastEntry (i32.sub (global.get $MAX_PART_INSTRUCTIONS) (i32.const 4)))
    (global.set $rangeCount (i32.const 0))
    (global.set $directCount (i32.const 0))
    (global.set $gapBudget (f64.convert_i32_u (global.get $SOURCE_GAP_BUDGET)))
    (global.set $lastRange (i32.const 0))
    (block $done
      (loop $opcode
        (br_if $done (i32.ge_u (local.get $ip) (global.get $instEnd)))
        (br_if $done (i32.ge_u (local.get $tp) (local.get $partEnd)))
        (br_if $done (i32.gt_u (local.get $n) (local.get $lastEntry)))
        (br_if $done (i32.ge_u (local.get $staged) (global.get $STAGE_PART)))
        (local.set $codeAt (local.get $ip))
        (local.set $code (i32.load8_u (local.get $ip)))
        (local.set $ip (i32.add (local.get $ip) (i32.const 1)))
        (local.set $half (i32.const 0))
        (loop $instruction
          ;; The instruction's column of the code table: the opcode, in the first or second half.
          (local.set $column
            (i32.add (global.get $CODE) (i32.add (local.get $code) (i32.mul (local.get $half) (i32.const 768)))))
          (local.set $type (i32.load8_u (local.get $column)))
          (if (i32.ne (local.get $type) (global.get $NOOP))
            (then
              (local.set $size (i64.extend_i32_u (i32.load8_u offset=256 (local.get $column))))
              (if (i64.eqz (local.get $size))
                (then
                  (local.set $sizeAt (local.get $ip))
                  (loop $sizeByte
                    (if (i32.ge_u (local.get $ip) (global.get $instEnd))
                      (then
                        (return (call $fail (global.get $ERR_SIZE_TRUNCATED) (local.get $sizeAt)
                          (f64.const 0) (f64.const 0) (f64.const 0)))))
                    (local.set $b (i32.load8_u (local.get $ip)))
                    (local.set $ip (i32.add (local.get $ip) (i32.const 1)))
                    (local.set $size
                      (i64.add (i64.shl (local.get $size) (i64.const 7))
                               (i64.extend_i32_u (i32.and (local.get $b) (i32.const 0x7f)))))
                    (if (i64.gt_u (local.get $size) (global.get $MAX_INTEGER))
                      (then
                        (return (call $fail (global.get $ERR_SIZE_TOO_LARGE) (local.get $sizeAt)
                          (f64.const 0) (f64.const 0) (f64.const 0)))))
                    (br_if $sizeByte (i32.and (local.get $b) (i32.const 0x80))))))
              (if (i64.gt_u (local.get $size)
                            (i64.extend_i32_u (i32.sub (global.get $targetLength) (local.get $tp))))
                (then
                  (return (call $fail (global.get $ERR_OVERFLOW) (local.get $codeAt)
                    (f64.convert_i64_u (local.get $size)) (f64.convert_i32_u (local.get $tp))
                    (f64.convert_i32_u (global.get $targetLength))))))
              (local.set $size32 (i32.wrap_i64 (local.get $size)))
              (if (i32.eq (local.get $type) (global.get $ADD))
                (then
                  (if (i32.gt_u (local.get $size32) (i32.sub (global.get $dataEnd) (local.get $dp)))
                    (then
                      (return (call $fail (global.get $ERR_ADD_DATA) (local.get $codeAt)
                        (f64.convert_i32_u (local.get $size32))
                        (f64.convert_i32_u (i32.sub (global.get $dataEnd) (local.get $dp)))
                        (f64.const 0)))))
                  (if (local.get $size32)
                    (then
                      (call $entry (local.get $n) (global.get $OP_ADD) (local.get $size32)
                        (i64.extend_i32_u (local.get $dp)))
                      (local.set $n (i32.add (local.get $n) (i32.const 1)))))
                  (local.set $dp (i32.add (local.get $dp) (local.get $size32))))
              (else (if (i32.eq (local.get $type) (global.get $RUN))
                (then
                  (if (i32.ge_u (local.get $dp) (global.get $dataEnd))
                    (then
                      (return (call $fail (global.get $ERR_RUN_DATA) (local.get $codeAt)
                        (f64.const 0) (f64.const 0) (f64.const 0)))))
                  (if (local.get $size32)
                    (then
                      (call $entry (local.get $n) (global.get $OP_RUN) (local.get $size32)
                        (i64.extend_i32_u (i32.load8_u (local.get $dp))))
                      (local.set $n (i32.add (local.get $n) (i32.const 1)))))
                  (local.set $dp (i32.add (local.get $dp) (i32.const 1))))
              (else
                ;; COPY: decode the address against source segment ‖ target so far.
                (local.set $mode (i32.load8_u offset=512 (local.get $column)))
                (local.set $here
                  (i64.add (global.get $segmentLength) (i64.extend_i32_u (local.get $tp))))
                (local.set $addrAt (local.get $ap))
                (if (i32.ge_u (local.get $mode) (global.get $FIRST_SAME_MODE))
                  (then
                    (if (i32.ge_u (local.get $ap) (global.get $addrEnd))
                      (then
                        (return (call $fail (global.get $ERR_ADDR_TRUNCATED) (local.get $addrAt)
                          (f64.const 0) (f64.const 0) (f64.const 0)))))
                    (local.set $addr
                      (i64.load
                        (i32.add (global.get $SAME)
                          (i32.shl
                            (i32.add
                              (i32.shl (i32.sub (local.get $mode) (global.get $FIRST_SAME_MODE)) (i32.const 8))
                              (i32.load8_u (local.get $ap)))
                            (i32.const 3)))))
                    (local.set $ap (i32.add (local.get $ap) (i32.const 1))))
                  (else
                    (local.set $value (i64.const 0))
                    (loop $addrByte
                      (if (i32.ge_u (local.get $ap) (global.get $addrEnd))
                        (then
                          (return (call $fail (global.get $ERR_ADDR_TRUNCATED) (local.get $addrAt)
                            (f64.const 0) (f64.const 0) (f64.const 0)))))
                      (local.set $b (i32.load8_u (local.get $ap)))
                      (local.set $ap (i32.add (local.get $ap) (i32.const 1)))
                      (local.set $value
                        (i64.add (i64.shl (local.get $value) (i64.const 7))
                                 (i64.extend_i32_u (i32.and (local.get $b) (i32.const 0x7f)))))
                      (if (i64.gt_u (local.get $value) (global.get $MAX_INTEGER))
                        (then
                          (return (call $fail (global.get $ERR_ADDR_TOO_LARGE) (local.get $addrAt)
                            (f64.const 0) (f64.const 0) (f64.const 0)))))
                      (br_if $addrByte (i32.and (local.get $b) (i32.const 0x80))))
                    (if (i32.eq (local.get $mode) (global.get $MODE_SELF))
                      (then (local.set $addr (local.get $value)))
                      (else (if (i32.eq (local.get $mode) (global.get $MODE_HERE))
                        (then (local.set $addr (i64.sub (local.get $here) (local.get $value))))
                        (else
                          (local.set $addr
                            (i64.add (local.get $value)
                              (i64.load
                                (i32.add (global.get $NEAR)
                                  (i32.shl (i32.sub (local.get $mode) (global.get $FIRST_NEAR_MODE))
                                           (i32.const 3))))))))))))
                (if (i32.or (i64.lt_s (local.get $addr) (i64.const 0))
                            (i64.ge_s (local.get $addr) (local.get $here)))
                  (then
                    (return (call $fail (global.get $ERR_ADDR_OUTSIDE) (local.get $addrAt)
                      (f64.convert_i64_s (local.get $addr)) (f64.convert_i64_u (local.get $here))
                      (f64.convert_i32_u (local.get $mode))))))
                (i64.store
                  (i32.add (global.get $NEAR) (i32.shl (global.get $nextSlot) (i32.const 3)))
                  (local.get $addr))
                (global.set $nextSlot (i32.and (i32.add (global.get $nextSlot) (i32.const 1)) (i32.const 3)))
                (i64.store
                  (i32.add (global.get $SAME)
                    (i32.shl (i32.wrap_i64 (i64.rem_u (local.get $addr) (i64.const 768))) (i32.const 3)))
                  (local.get $addr))
                (local.set $rest (local.get $size32))
                ;; Where the copy reads in the target window when it starts (or goes on) past the segment.
                (local.set $from (i64.sub (local.get $addr) (global.get $segmentLength)))
                (if (i32.and (i64.lt_u (local.get $addr) (global.get $segmentLength))
                             (i32.ne (local.get $size32) (i32.const 0)))
                  (then
                    (local.set $fromSource (local.get $size32))
                    (if (i64.lt_u (i64.sub (global.get $segmentLength) (local.get $addr))
                                  (i64.extend_i32_u (local.get $size32)))
                      (then
                        (local.set $fromSource
                          (i32.wrap_i64 (i64.sub (global.get $segmentLength) (local.get $addr))))))
                    (if (i32.ge_u (local.get $fromSource) (global.get $DIRECT_READ))
                      (then
                        (call $addDirect (local.get $addr) (local.get $tp) (local.get $fromSource))
                        (call $entry (local.get $n) (global.get $OP_COPY_DIRECT) (local.get $fromSource)
                          (local.get $addr)))
                      (else
                        (call $addRange
                          (f64.convert_i64_u (local.get $addr))
                          (f64.convert_i64_u
                            (i64.add (local.get $addr) (i64.extend_i32_u (local.get $fromSource)))))
                        (local.set $staged (i32.add (local.get $staged) (local.get $fromSource)))
                        (call $entry (local.get $n) (global.get $OP_COPY_STAGED) (local.get $fromSource)
                          (local.get $addr))))
                    (local.set $n (i32.add (local.get $n) (i32.const 1)))
                    (local.set $rest (i32.sub (local.get $rest) (local.get $fromSource)))
                    (local.set $from (i64.const 0))))
                (if (local.get $rest)
                  (then
                    (call $entry (local.get $n) (global.get $OP_COPY_TARGET) (local.get $rest)
                      (local.get $from))
                    (local.set $n (i32.add (local.get $n) (i32.const 1)))))))))
              (local.set $tp (i32.add (local.get $tp) (local.get $size32)))))
          (local.set $half (i32.add (local.get $half) (i32.const 1)))
          (br_if $instruction (i32.lt_u (local.get $half) (i32.const 2))))
        (br $opcode)))
    (global.set $ip (local.get $ip))
    (global.set $dp (local.get $dp))
    (global.set $ap (local.get $ap))
    (global.set $tp (local.get $tp))
    (global.set $opCount (local.get $n))
    (i32.const 0))

  ;; Copies n bytes from `from` to `to` one at a time, forwards (so an overlap repeats what it wrote).
  (func $copyBytes (param $to i32) (param $from i32) (param $n i32)
    (local $end i32)
    (local.set $end (i32.add (local.get $to) (local.get $n)))
    (block $done
      (loop $byte
        (br_if $done (i32.ge_u (local.get $to) (local.get $end)))
        (i32.store8 (local.get $to) (i32.load8_u (local.get $from)))
        (local.set $to (i32.add (local.get $to) (i32.const 1)))
        (local.set $from (i32.add (local.get $from) (i32.const 1)))
        (br $byte))))

  ;; Copies n bytes from `from` to `to`, regions that do not overlap.
  (func $copy (param $to i32) (param $from i32) (param $n i32)
    (if (i32.lt_u (local.get $n) (global.get $SHORT_COPY))
      (then (call $copyBytes (local.get $to) (local.get $from) (local.get $n)))
      (else (memory.copy (local.get $to) (local.get $from) (local.get $n)))))

  ;; Copies n bytes from `from` to `to` with from < to as if byte by byte: where they overlap, the
  ;; output repeats [from, to) with period to − from.
  (func $copyOverlapping (param $to i32) (param $from i32) (param $n i32)
    (local $distance i32) (local $written i32) (local $chunk i32)
    (local.set $distance (i32.sub (local.get $to) (local.get $from)))
    (if (i32.or (i32.lt_u (local.get $n) (global.get $SHORT_COPY))
                (i32.lt_u (local.get $distance) (global.get $SHORT_COPY)))
      (then
        (call $copyBytes (local.get $to) (local.get $from) (local.get $n))
        (return)))
    (if (i32.ge_u (local.get $distance) (local.get $n))
      (then
        (memory.copy (local.get $to) (local.get $from) (local.get $n))
        (return)))
    ;; One period, then double what is written.
    (memory.copy (local.get $to) (local.get $from) (local.get $distance))
    (local.set $written (local.get $distance))
    (block $done
      (loop $double
        (br_if $done (i32.ge_u (local.get $written) (local.get $n)))
        (local.set $chunk (i32.sub (local.get $n) (local.get $written)))
        (if (i32.gt_u (local.get $chunk) (local.get $written))
          (then (local.set $chunk (local.get $written))))
        (memory.copy (i32.add (local.get $to) (local.get $written)) (local.get $to) (local.get $chunk))
        (local.set $written (i32.add (local.get $written) (local.get $chunk)))
        (br $double))))

  ;; Where segment address addr sits in the staging area (always inside one of the merged ranges).
  (func $sourceIndex (param $addr f64) (param $ranges i32) (param $stagedAt i32) (result i32)
    (local $r i32) (local $lo i32) (local $hi i32) (local $mid i32)
    (local.set $r (i32.shl (global.get $lastRange) (i32.const 3)))
    (if (i32.eqz
          (i32.and
            (f64.ge (local.get $addr) (f64.load (i32.add (global.get $RANGE_START) (local.get $r))))
            (f64.lt (local.get $addr) (f64.load (i32.add (global.get $RANGE_END) (local.get $r))))))
      (then
        (local.set $hi (i32.sub (local.get $ranges) (i32.const 1)))
        (block $found
          (loop $search
            (br_if $found (i32.ge_s (local.get $lo) (local.get $hi)))
            (local.set $mid
              (i32.shr_u (i32.add (i32.add (local.get $lo) (local.get $hi)) (i32.const 1)) (i32.const 1)))
            (if (f64.le (f64.load (i32.add (global.get $RANGE_START) (i32.shl (local.get $mid) (i32.const 3))))
                        (local.get $addr))
              (then (local.set $lo (local.get $mid)))
              (else (local.set $hi (i32.sub (local.get $mid) (i32.const 1)))))
            (br $search)))
        (global.set $lastRange (local.get $lo))
        (local.set $r (i32.shl (local.get $lo) (i32.const 3)))))
    (i32.add (local.get $stagedAt)
      (i32.trunc_f64_u
        (f64.add (f64.load (i32.add (global.get $RANGE_AT) (local.get $r)))
                 (f64.sub (local.get $addr) (f64.load (i32.add (global.get $RANGE_START) (local.get $r))))))))

  ;; Writes the part's target bytes from its table, starting at `to`: the window's target slot
  ;; starts at targetAt, the part's merged staged ranges (`ranges` of them) sit from stagedAt.
  (func (export "execute") (param $targetAt i32) (param $to i32) (param $ranges i32) (param $stagedAt i32)
    (local $i i32) (local $size i32) (local $arg i64)
    (local.set $to (i32.add (local.get $targetAt) (local.get $to)))
    (block $done
      (loop $entry
        (br_if $done (i32.ge_u (local.get $i) (global.get $opCount)))
        (local.set $size
          (i32.load (i32.add (global.get $SIZES) (i32.shl (local.get $i) (i32.const 2)))))
        (local.set $arg
          (i64.load (i32.add (global.get $ARGS) (i32.shl (local.get $i) (i32.const 3)))))
        (block $next
          (block $target
            (block $direct
              (block $staged
                (block $run
                  (block $add
                    (br_table $add $run $staged $direct $target
                      (i32.load8_u (i32.add (global.get $OPS) (local.get $i)))))
                  ;; OP_ADD: the argument is the data section position.
                  (call $copy (local.get $to) (i32.wrap_i64 (local.get $arg)) (local.get $size))
                  (br $next))
                ;; OP_RUN: the argument is the byte.
                (memory.fill (local.get $to) (i32.wrap_i64 (local.get $arg)) (local.get $size))
                (br $next))
              ;; OP_COPY_STAGED: the argument is the segment address.
              (call $copy (local.get $to)
                (call $sourceIndex (f64.convert_i64_u (local.get $arg)) (local.get $ranges) (local.get $stagedAt))
                (local.get $size))
              (br $next))
            ;; OP_COPY_DIRECT: read in place already.
            (br $next))
          ;; OP_COPY_TARGET: the argument is the target position copied from.
          (call $copyOverlapping (local.get $to)
            (i32.add (local.get $targetAt) (i32.wrap_i64 (local.get $arg))) (local.get $size)))
        (local.set $to (i32.add (local.get $to) (local.get $size)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $entry)))))
