;; Adler-32 (RFC 1950) with WebAssembly SIMD, 16 bytes a step.
;; Built into adler32-wasm.ts by `npm run build:wasm`; format.ts calls it and keeps a plain
;; TypeScript version for runtimes without WebAssembly SIMD.
;;
;; The caller copies up to 64 KiB into memory[0, len) and calls adler32(len, previous value).
;; Per block of 16 bytes d0..d15, with `a` the running sum before the block:
;;   b += 16·a + 16·d0 + 15·d1 + … + 1·d15,   a += d0 + … + d15.
;; Lanes keep the block sums (s1), the weighted sums (s2) and the sum of the s1 lanes before each
;; block (ps, so that 16·ps adds the earlier blocks' share of 16·a). A run of 347 blocks (5,552
;; bytes, zlib's NMAX) keeps every lane below 2^31; the totals are reduced in 64 bits.
(module
  (memory (export "memory") 1)

  (func $lanes (param $v v128) (result i64)
    (i64.add
      (i64.add
        (i64.extend_i32_u (i32x4.extract_lane 0 (local.get $v)))
        (i64.extend_i32_u (i32x4.extract_lane 1 (local.get $v))))
      (i64.add
        (i64.extend_i32_u (i32x4.extract_lane 2 (local.get $v)))
        (i64.extend_i32_u (i32x4.extract_lane 3 (local.get $v))))))

  (func (export "adler32") (param $len i32) (param $start i32) (result i32)
    (local $a i64) (local $b i64)
    (local $i i32) (local $end i32) (local $vectorEnd i32)
    (local $v v128) (local $s1 v128) (local $s2 v128) (local $ps v128)
    (local.set $a (i64.extend_i32_u (i32.and (local.get $start) (i32.const 0xffff))))
    (local.set $b (i64.extend_i32_u (i32.shr_u (local.get $start) (i32.const 16))))
    (block $done
      (loop $run
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $end (i32.add (local.get $i) (i32.const 5552)))
        (if (i32.gt_u (local.get $end) (local.get $len))
          (then (local.set $end (local.get $len))))
        (local.set $vectorEnd
          (i32.sub (local.get $end) (i32.and (i32.sub (local.get $end) (local.get $i)) (i32.const 15))))
        ;; 16·a for every byte of the run's whole blocks.
        (local.set $b
          (i64.add (local.get $b)
            (i64.mul (i64.extend_i32_u (i32.sub (local.get $vectorEnd) (local.get $i))) (local.get $a))))
        (local.set $s1 (v128.const i32x4 0 0 0 0))
        (local.set $s2 (v128.const i32x4 0 0 0 0))
        (local.set $ps (v128.const i32x4 0 0 0 0))
        (block $blocksDone
          (loop $block
            (br_if $blocksDone (i32.ge_u (local.get $i) (local.get $vectorEnd)))
            (local.set $v (v128.load (local.get $i)))
            (local.set $ps (i32x4.add (local.get $ps) (local.get $s1)))
            (local.set $s2
              (i32x4.add (local.get $s2)
                (i32x4.add
                  (i32x4.dot_i16x8_s
                    (i16x8.extend_low_i8x16_u (local.get $v))
                    (v128.const i16x8 16 15 14 13 12 11 10 9))
                  (i32x4.dot_i16x8_s
                    (i16x8.extend_high_i8x16_u (local.get $v))
                    (v128.const i16x8 8 7 6 5 4 3 2 1)))))
            (local.set $s1
              (i32x4.add (local.get $s1)
                (i32x4.extadd_pairwise_i16x8_u (i16x8.extadd_pairwise_i8x16_u (local.get $v)))))
            (local.set $i (i32.add (local.get $i) (i32.const 16)))
            (br $block)))
        (local.set $b
          (i64.add (local.get $b)
            (i64.add
              (i64.shl (call $lanes (local.get $ps)) (i64.const 4))
              (call $lanes (local.get $s2)))))
        (local.set $a (i64.add (local.get $a) (call $lanes (local.get $s1))))
        ;; The last run's bytes after its whole blocks, one at a time.
        (block $bytesDone
          (loop $byte
            (br_if $bytesDone (i32.ge_u (local.get $i) (local.get $end)))
            (local.set $a (i64.add (local.get $a) (i64.load8_u (local.get $i))))
            (local.set $b (i64.add (local.get $b) (local.get $a)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $byte)))
        (local.set $a (i64.rem_u (local.get $a) (i64.const 65521)))
        (local.set $b (i64.rem_u (local.get $b) (i64.const 65521)))
        (br $run)))
    (i32.or
      (i32.shl (i32.wrap_i64 (local.get $b)) (i32.const 16))
      (i32.wrap_i64 (local.get $a))))
)
