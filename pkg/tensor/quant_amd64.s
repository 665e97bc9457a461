//go:build amd64

#include "textflag.h"

// Quantized dot-product kernels; see quant_amd64.go for the contracts.
// Each kernel covers the rows in blocks of 4 (sharing every activation
// block's loads and abs/sign work), then one row at a time; each row keeps
// a vector of float partial sums, added horizontally into out[r] at the end.

// HSUM512 adds the 16 floats of z (whose low half is y) and stores the sum
// at dst. Clobbers Y13, Y14.
#define HSUM512(z, y, dst) \
	VEXTRACTF64X4 $1, z, Y13; \
	VADDPS        Y13, y, Y13; \
	VEXTRACTF128  $1, Y13, X14; \
	VADDPS        X14, X13, X13; \
	VMOVHLPS      X13, X13, X14; \
	VADDPS        X14, X13, X13; \
	VMOVSHDUP     X13, X14; \
	VADDSS        X14, X13, X13; \
	VMOVSS        X13, dst

// HSUM256 adds the 8 floats of y (whose low half is x) and stores the sum
// at dst, using the X temporaries t1, t2.
#define HSUM256(y, x, t1, t2, dst) \
	VEXTRACTF128 $1, y, t1; \
	VADDPS       t1, x, t1; \
	VMOVHLPS     t1, t1, t2; \
	VADDPS       t2, t1, t1; \
	VMOVSHDUP    t1, t2; \
	VADDSS       t2, t1, t1; \
	VMOVSS       t1, dst

// ---------------------------------------------------------------------------
// AVX-512 VNNI, int8 weights: exact int32 dot products.
//
// Per 64 inputs: Z0 = the activation codes with their top bit flipped
// (x ^ 0x80 = x + 128 as an unsigned byte), the unsigned operand of one
// VPDPBUSD per row whose signed operand is the row's 64 weight codes,
// straight from memory: the accumulator gains sum (x+128)*w, and the
// row's 128*sum(w) (wsum, from quantization) is taken out at the end. Four
// rows share each activation load; the int32 sums wrap, which is harmless
// because the true result fits in an int32 (see QInt8's column limit).

// HSUMD512 adds the 16 int32 lanes of z (whose low half is y), subtracts
// 128*(*ws) and stores the result at dst. Clobbers Y13, X14, R12, R13.
#define HSUMD512(z, y, ws, dst) \
	VEXTRACTI64X4 $1, z, Y13; \
	VPADDD        Y13, y, Y13; \
	VEXTRACTI128  $1, Y13, X14; \
	VPADDD        X14, X13, X13; \
	VPSHUFD       $0x4e, X13, X14; \
	VPADDD        X14, X13, X13; \
	VPSHUFD       $0xb1, X13, X14; \
	VPADDD        X14, X13, X13; \
	VMOVD         X13, R12; \
	MOVL          ws, R13; \
	SHLL          $7, R13; \
	SUBL          R13, R12; \
	MOVL          R12, dst

// func q8DotsAvx512(rows, groups int, w *byte, stride int, xq *int8, wsum *int32, out *int32)
TEXT ·q8DotsAvx512(SB), NOSPLIT, $0-56
	MOVQ rows+0(FP), CX
	MOVQ w+16(FP), DI
	MOVQ stride+24(FP), SI
	MOVQ wsum+40(FP), R8
	MOVQ out+48(FP), R9
	LEAQ (SI)(SI*2), R11
	MOVL $0x80808080, AX
	VMOVD AX, X30
	VPBROADCASTD X30, Z30
	CMPQ CX, $4
	JLT  q8z_tail

q8z_loop4:
	MOVQ   DI, R10
	MOVQ   xq+32(FP), AX
	MOVQ   groups+8(FP), BX
	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7

q8z_g4:
	VPXORD   (AX), Z30, Z0
	VPDPBUSD (R10), Z0, Z4
	VPDPBUSD (R10)(SI*1), Z0, Z5
	VPDPBUSD (R10)(SI*2), Z0, Z6
	VPDPBUSD (R10)(R11*1), Z0, Z7
	ADDQ $64, AX
	ADDQ $64, R10
	DECQ BX
	JNZ  q8z_g4

	HSUMD512(Z4, Y4, 0(R8), 0(R9))
	HSUMD512(Z5, Y5, 4(R8), 4(R9))
	HSUMD512(Z6, Y6, 8(R8), 8(R9))
	HSUMD512(Z7, Y7, 12(R8), 12(R9))
	LEAQ (DI)(SI*4), DI
	ADDQ $16, R8
	ADDQ $16, R9
	SUBQ $4, CX
	CMPQ CX, $4
	JGE  q8z_loop4

q8z_tail:
	TESTQ CX, CX
	JZ    q8z_done

q8z_loop1:
	MOVQ   DI, R10
	MOVQ   xq+32(FP), AX
	MOVQ   groups+8(FP), BX
	VPXORD Z4, Z4, Z4

q8z_g1:
	VPXORD   (AX), Z30, Z0
	VPDPBUSD (R10), Z0, Z4
	ADDQ $64, AX
	ADDQ $64, R10
	DECQ BX
	JNZ  q8z_g1

	HSUMD512(Z4, Y4, 0(R8), 0(R9))
	ADDQ SI, DI
	ADDQ $4, R8
	ADDQ $4, R9
	DECQ CX
	JNZ  q8z_loop1

q8z_done:
	VZEROUPPER
	RET

// func q8DotsSeqAvx512(rows, groups int, w *byte, stride int, xq *int8, wsum *int32, out *int32)
// One row at a time, four groups (256 weight bytes: one stream of four
// cache lines) a step into four accumulators, then single groups.
TEXT ·q8DotsSeqAvx512(SB), NOSPLIT, $0-56
	MOVQ rows+0(FP), CX
	MOVQ w+16(FP), DI
	MOVQ stride+24(FP), SI
	MOVQ wsum+40(FP), R8
	MOVQ out+48(FP), R9
	MOVL $0x80808080, AX
	VMOVD AX, X30
	VPBROADCASTD X30, Z30
	TESTQ CX, CX
	JZ    q8s_done

q8s_row:
	MOVQ   DI, R10
	MOVQ   xq+32(FP), AX
	MOVQ   groups+8(FP), BX
	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7

q8s_g4:
	CMPQ BX, $4
	JLT  q8s_g1
	VPXORD   (AX), Z30, Z0
	VPDPBUSD (R10), Z0, Z4
	VPXORD   64(AX), Z30, Z1
	VPDPBUSD 64(R10), Z1, Z5
	VPXORD   128(AX), Z30, Z2
	VPDPBUSD 128(R10), Z2, Z6
	VPXORD   192(AX), Z30, Z3
	VPDPBUSD 192(R10), Z3, Z7
	ADDQ $256, AX
	ADDQ $256, R10
	SUBQ $4, BX
	JMP  q8s_g4

q8s_g1:
	TESTQ BX, BX
	JZ    q8s_red
	VPXORD   (AX), Z30, Z0
	VPDPBUSD (R10), Z0, Z4
	ADDQ $64, AX
	ADDQ $64, R10
	DECQ BX
	JMP  q8s_g1

q8s_red:
	VPADDD Z5, Z4, Z4
	VPADDD Z7, Z6, Z6
	VPADDD Z6, Z4, Z4
	HSUMD512(Z4, Y4, 0(R8), 0(R9))
	ADDQ SI, DI
	ADDQ $4, R8
	ADDQ $4, R9
	DECQ CX
	JNZ  q8s_row

q8s_done:
	VZEROUPPER
	RET

// ---------------------------------------------------------------------------
// AVX-512 VNNI, 4-bit weights.
//
// Blocks of 4 rows go two rows per zmm (Q4PAIR512); the 1-row tail uses
// Q4ROW512: Z0 = activation codes (signed), Z2 = xs[b] broadcast,
// Z3 = {-8*xsum[b], 0, ..., 0} (the zero point, in lane 0), Z30 = 0x0F bytes.
// The row's 32 code bytes become 64 unsigned codes in input order (low
// nibbles, then high nibbles), VPDPBUSD against x onto a copy of Z3, then
// convert and FMA with f16(d) * xs[b].
#define Q4ROW512(wp, dp, acc) \
	VMOVDQU      wp, Y8; \
	VPSRLW       $4, Y8, Y9; \
	VINSERTI64X4 $1, Y9, Z8, Z8; \
	VPANDD       Z30, Z8, Z8; \
	VMOVDQA64    Z3, Z10; \
	VPDPBUSD     Z0, Z8, Z10; \
	VCVTDQ2PS    Z10, Z10; \
	VPBROADCASTW dp, Y11; \
	VCVTPH2PS    Y11, Z11; \
	VMULPS       Z2, Z11, Z11; \
	VFMADD231PS  Z11, Z10, acc

// Q4PAIR512 does one group of two rows A, B in one zmm: the lower 256 bits
// of every vector belong to row A, the upper to row B. Z0 / Z1 = x[0:32] /
// x[32:64] in both halves, Z3 = -8*xsum[b] in lanes 0 and 8; the 32 code
// bytes of both rows give the low nibbles (inputs 0..31) and the high
// nibbles (inputs 32..63), each VPDPBUSD'd against its half of x; the
// scales are [f16(dA) x 8, f16(dB) x 8] * xs[b].
#define Q4PAIR512(wa, wb, da, db, acc) \
	VMOVDQU      wa, Y8; \
	VINSERTI64X4 $1, wb, Z8, Z8; \
	VPSRLW       $4, Z8, Z9; \
	VPANDD       Z30, Z8, Z8; \
	VPANDD       Z30, Z9, Z9; \
	VMOVDQA64    Z3, Z10; \
	VPDPBUSD     Z0, Z8, Z10; \
	VPDPBUSD     Z1, Z9, Z10; \
	VCVTDQ2PS    Z10, Z10; \
	VPBROADCASTW da, X11; \
	VPBROADCASTW db, X12; \
	VINSERTI128  $1, X12, Y11, Y11; \
	VCVTPH2PS    Y11, Z11; \
	VMULPS       Z2, Z11, Z11; \
	VFMADD231PS  Z11, Z10, acc

// Z3 = {-8*xsum[BX], 0, ...}; needs Z31 = 0.
#define Q4ZP512 \
	VMOVD  (DX)(BX*4), X3; \
	VPSLLD $3, X3, X3; \
	VPSUBD Z3, Z31, Z3

// func q4DotsAvx512(rows, groups int, w *byte, stride int, d *uint16, xq *int8, xs *float32, xsum *int32, out *float32)
TEXT ·q4DotsAvx512(SB), NOSPLIT, $0-72
	MOVQ rows+0(FP), CX
	MOVQ groups+8(FP), R13
	MOVQ w+16(FP), DI
	MOVQ stride+24(FP), SI
	MOVQ d+32(FP), R12
	MOVQ xs+48(FP), R8
	MOVQ xsum+56(FP), DX
	MOVQ out+64(FP), R9
	SHLQ $1, R13              // bytes of scales per row
	LEAQ (R13)(R13*2), R14    // 3 rows of scales
	LEAQ (SI)(SI*2), R11      // 3 rows of codes
	VPXORD Z31, Z31, Z31
	MOVL $0x0f0f0f0f, AX
	VMOVD AX, X30
	VPBROADCASTD X30, Z30
	MOVL $0x0101, AX
	KMOVW AX, K2
	CMPQ CX, $4
	JLT  q4z_tail

q4z_loop4:
	MOVQ   DI, R10
	MOVQ   xq+40(FP), AX
	XORQ   BX, BX
	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5

q4z_g4:
	VBROADCASTI64X4 (AX), Z0        // x[0:32] in both halves
	VBROADCASTI64X4 32(AX), Z1      // x[32:64] in both halves
	VBROADCASTSS    (R8)(BX*4), Z2
	VPBROADCASTD.Z  (DX)(BX*4), K2, Z3
	VPSLLD          $3, Z3, Z3
	VPSUBD          Z3, Z31, Z3     // -8*xsum in lanes 0 and 8
	Q4PAIR512((R10), (R10)(SI*1), (R12), (R12)(R13*1), Z4)
	Q4PAIR512((R10)(SI*2), (R10)(R11*1), (R12)(R13*2), (R12)(R14*1), Z5)
	ADDQ $64, AX
	ADDQ $32, R10
	ADDQ $2, R12
	INCQ BX
	CMPQ BX, groups+8(FP)
	JLT  q4z_g4

	VEXTRACTF64X4 $1, Z4, Y6
	VEXTRACTF64X4 $1, Z5, Y7
	HSUM256(Y4, X4, X10, X11, 0(R9))
	HSUM256(Y6, X6, X10, X11, 4(R9))
	HSUM256(Y5, X5, X10, X11, 8(R9))
	HSUM256(Y7, X7, X10, X11, 12(R9))
	LEAQ (DI)(SI*4), DI
	ADDQ R14, R12             // R12 moved one row of scales already
	ADDQ $16, R9
	SUBQ $4, CX
	CMPQ CX, $4
	JGE  q4z_loop4

q4z_tail:
	TESTQ CX, CX
	JZ    q4z_done

q4z_loop1:
	MOVQ   DI, R10
	MOVQ   xq+40(FP), AX
	XORQ   BX, BX
	VPXORD Z4, Z4, Z4

q4z_g1:
	VMOVDQU64    (AX), Z0
	VBROADCASTSS (R8)(BX*4), Z2
	Q4ZP512
	Q4ROW512((R10), (R12), Z4)
	ADDQ $64, AX
	ADDQ $32, R10
	ADDQ $2, R12
	INCQ BX
	CMPQ BX, groups+8(FP)
	JLT  q4z_g1

	HSUM512(Z4, Y4, 0(R9))
	ADDQ SI, DI
	ADDQ $4, R9
	DECQ CX
	JNZ  q4z_loop1

q4z_done:
	VZEROUPPER
	RET

// func q4DotsSeqAvx512(rows, groups int, w *byte, stride int, d *uint16, xq *int8, xs *float32, xsum *int32, out *float32)
// One row at a time, as q4z_loop1 does (two streams: the row's codes and
// its scales), two groups a step into two accumulators (Z4, Z5), then a
// last single group.
TEXT ·q4DotsSeqAvx512(SB), NOSPLIT, $0-72
	MOVQ rows+0(FP), CX
	MOVQ w+16(FP), DI
	MOVQ stride+24(FP), SI
	MOVQ d+32(FP), R12
	MOVQ xs+48(FP), R8
	MOVQ xsum+56(FP), DX
	MOVQ out+64(FP), R9
	VPXORD Z31, Z31, Z31
	MOVL $0x0f0f0f0f, AX
	VMOVD AX, X30
	VPBROADCASTD X30, Z30
	TESTQ CX, CX
	JZ    q4s_done

q4s_row:
	MOVQ   DI, R10
	MOVQ   xq+40(FP), AX
	XORQ   BX, BX
	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5

q4s_g2:
	LEAQ 2(BX), R11
	CMPQ R11, groups+8(FP)
	JGT  q4s_g1
	VMOVDQU64    (AX), Z0
	VBROADCASTSS (R8)(BX*4), Z2
	Q4ZP512
	Q4ROW512((R10), (R12), Z4)
	VMOVDQU64    64(AX), Z0
	VBROADCASTSS 4(R8)(BX*4), Z2
	VMOVD        4(DX)(BX*4), X3
	VPSLLD       $3, X3, X3
	VPSUBD       Z3, Z31, Z3
	Q4ROW512(32(R10), 2(R12), Z5)
	ADDQ $128, AX
	ADDQ $64, R10
	ADDQ $4, R12
	ADDQ $2, BX
	JMP  q4s_g2

q4s_g1:
	CMPQ BX, groups+8(FP)
	JGE  q4s_red
	VMOVDQU64    (AX), Z0
	VBROADCASTSS (R8)(BX*4), Z2
	Q4ZP512
	Q4ROW512((R10), (R12), Z4)
	ADDQ $64, AX
	ADDQ $32, R10
	ADDQ $2, R12
	INCQ BX
	JMP  q4s_g1

q4s_red:
	VADDPS Z5, Z4, Z4
	HSUM512(Z4, Y4, 0(R9))
	ADDQ SI, DI
	ADDQ $4, R9
	DECQ CX
	JNZ  q4s_row

q4s_done:
	VZEROUPPER
	RET

// ---------------------------------------------------------------------------
// AVX2, int8 weights: exact int32 dot products.
//
// Per 64 inputs: Y0, Y1 = activation codes (two halves), Y2, Y3 = |x|,
// Y15 = int16 ones. For one row: VPSIGNB moves x's sign onto w (and zeroes
// w where x = 0), VPMADDUBSW (|x| unsigned, w' signed) gives int16 pairs
// (|.| <= 2*127*127, no saturation), VPMADDWD with ones gives int32, added
// into the row's accumulator. wsum is not needed (no offset).
#define Q8ROW256(m0, m1, acc) \
	VMOVDQU    m0, Y8; \
	VMOVDQU    m1, Y9; \
	VPSIGNB    Y0, Y8, Y8; \
	VPSIGNB    Y1, Y9, Y9; \
	VPMADDUBSW Y8, Y2, Y8; \
	VPMADDUBSW Y9, Y3, Y9; \
	VPMADDWD   Y15, Y8, Y8; \
	VPMADDWD   Y15, Y9, Y9; \
	VPADDD     Y8, acc, acc; \
	VPADDD     Y9, acc, acc

#define Q8X256 \
	VMOVDQU (AX), Y0; \
	VMOVDQU 32(AX), Y1; \
	VPABSB  Y0, Y2; \
	VPABSB  Y1, Y3

// HSUMD256 adds the 8 int32 lanes of y (whose low half is x) and stores the
// sum at dst. Clobbers X10, X11, R12.
#define HSUMD256(y, x, dst) \
	VEXTRACTI128 $1, y, X10; \
	VPADDD       X10, x, X10; \
	VPSHUFD      $0x4e, X10, X11; \
	VPADDD       X11, X10, X10; \
	VPSHUFD      $0xb1, X10, X11; \
	VPADDD       X11, X10, X10; \
	VMOVD        X10, R12; \
	MOVL         R12, dst

// Q8ROWS1 computes the CX (>= 1) rows left one after the other, two
// groups a step, each line of W prefetched 1536 bytes ahead
// (gemvSeqPrefetch256 in gemm_asmgen.go), and returns: q8DotsAvx2's last
// 1-3 rows, and all of q8DotsSeqAvx2's. R11 holds xq and R8 groups. x's
// codes and |x| are reloaded and recomputed for every row: L1 loads and
// two VPABSB a group, against a core that is waiting on memory. The sums
// are exact, so any order gives the same.
#define Q8ROWS1 \
q8row1: \
	MOVQ  DI, R10; \
	MOVQ  R11, AX; \
	MOVQ  R8, BX; \
	VPXOR Y4, Y4, Y4; \
	VPXOR Y5, Y5, Y5; \
q8g2: \
	CMPQ BX, $2; \
	JLT  q8g1; \
	PREFETCHT0 1536(R10); \
	PREFETCHT0 1600(R10); \
	Q8X256; \
	Q8ROW256((R10), 32(R10), Y4); \
	VMOVDQU 64(AX), Y0; \
	VMOVDQU 96(AX), Y1; \
	VPABSB  Y0, Y2; \
	VPABSB  Y1, Y3; \
	Q8ROW256(64(R10), 96(R10), Y5); \
	ADDQ $128, AX; \
	ADDQ $128, R10; \
	SUBQ $2, BX; \
	JMP  q8g2; \
q8g1: \
	TESTQ BX, BX; \
	JZ    q8red; \
	Q8X256; \
	Q8ROW256((R10), 32(R10), Y4); \
q8red: \
	VPADDD Y5, Y4, Y4; \
	HSUMD256(Y4, X4, 0(R9)); \
	ADDQ SI, DI; \
	ADDQ $4, R9; \
	DECQ CX; \
	JNZ  q8row1; \
	VZEROUPPER; \
	RET

// func q8DotsAvx2(rows, groups int, w *byte, stride int, xq *int8, wsum *int32, out *int32)
TEXT ·q8DotsAvx2(SB), NOSPLIT, $0-56
	MOVQ rows+0(FP), CX
	MOVQ w+16(FP), DI
	MOVQ stride+24(FP), SI
	MOVQ out+48(FP), R9
	LEAQ (SI)(SI*2), R11
	MOVL $0x00010001, AX
	VMOVD AX, X15
	VPBROADCASTD X15, Y15
	CMPQ CX, $4
	JLT  q8y_tail

q8y_loop4:
	MOVQ  DI, R10
	MOVQ  xq+32(FP), AX
	MOVQ  groups+8(FP), BX
	VPXOR Y4, Y4, Y4
	VPXOR Y5, Y5, Y5
	VPXOR Y6, Y6, Y6
	VPXOR Y7, Y7, Y7

q8y_g4:
	Q8X256
	Q8ROW256((R10), 32(R10), Y4)
	Q8ROW256((R10)(SI*1), 32(R10)(SI*1), Y5)
	Q8ROW256((R10)(SI*2), 32(R10)(SI*2), Y6)
	Q8ROW256((R10)(R11*1), 32(R10)(R11*1), Y7)
	ADDQ $64, AX
	ADDQ $64, R10
	DECQ BX
	JNZ  q8y_g4

	HSUMD256(Y4, X4, 0(R9))
	HSUMD256(Y5, X5, 4(R9))
	HSUMD256(Y6, X6, 8(R9))
	HSUMD256(Y7, X7, 12(R9))
	LEAQ (DI)(SI*4), DI
	ADDQ $16, R9
	SUBQ $4, CX
	CMPQ CX, $4
	JGE  q8y_loop4

q8y_tail:
	TESTQ CX, CX
	JZ    q8y_done
	MOVQ  xq+32(FP), R11
	MOVQ  groups+8(FP), R8
	Q8ROWS1

q8y_done:
	VZEROUPPER
	RET

// func q8DotsSeqAvx2(rows, groups int, w *byte, stride int, xq *int8, wsum *int32, out *int32)
//
// q8DotsAvx2 one row after the other (one memory stream; see
// gemvSequential): every row through Q8ROWS1.
TEXT ·q8DotsSeqAvx2(SB), NOSPLIT, $0-56
	MOVQ rows+0(FP), CX
	MOVQ w+16(FP), DI
	MOVQ stride+24(FP), SI
	MOVQ out+48(FP), R9
	MOVQ xq+32(FP), R11
	MOVQ groups+8(FP), R8
	MOVL $0x00010001, AX
	VMOVD AX, X15
	VPBROADCASTD X15, Y15
	TESTQ CX, CX
	JZ    q8ys_done
	Q8ROWS1

q8ys_done:
	VZEROUPPER
	RET

// ---------------------------------------------------------------------------
// AVX2, 4-bit weights.
//
// Per group: Y0, Y1 = activation codes for inputs 0..31 and 32..63,
// Y3 = {-8*xsum[b], 0, ...}, Y12 = 0, Y13 = 0x0F bytes, Y14 = xs[b]
// broadcast, Y15 = int16 ones. For one row: low and high nibbles are the
// unsigned operands of VPMADDUBSW against x (|pair| <= 2*15*127), the two
// halves add in int16 (<= 4*15*127), VPMADDWD with ones gives int32.
#define Q4ROW256(wp, dp, acc) \
	VMOVDQU      wp, Y8; \
	VPSRLW       $4, Y8, Y9; \
	VPAND        Y13, Y8, Y8; \
	VPAND        Y13, Y9, Y9; \
	VPMADDUBSW   Y0, Y8, Y8; \
	VPMADDUBSW   Y1, Y9, Y9; \
	VPADDW       Y9, Y8, Y8; \
	VPMADDWD     Y15, Y8, Y8; \
	VPADDD       Y3, Y8, Y8; \
	VCVTDQ2PS    Y8, Y8; \
	VPBROADCASTW dp, X10; \
	VCVTPH2PS    X10, Y10; \
	VMULPS       Y14, Y10, Y10; \
	VFMADD231PS  Y10, Y8, acc

#define Q4X256 \
	VMOVDQU      (AX), Y0; \
	VMOVDQU      32(AX), Y1; \
	VBROADCASTSS (R8)(BX*4), Y14; \
	VMOVD        (DX)(BX*4), X3; \
	VPSLLD       $3, X3, X3; \
	VPSUBD       Y3, Y12, Y3

// Q4CONSTS sets the 4-bit kernels' constants (Y12, Y13, Y15 as above)
// and, from R13 = 2*groups and SI = stride, R14 = 3*R13 and R11 =
// 3*stride. Clobbers AX.
#define Q4CONSTS \
	SHLQ $1, R13; \
	LEAQ (R13)(R13*2), R14; \
	LEAQ (SI)(SI*2), R11; \
	VPXOR Y12, Y12, Y12; \
	MOVL $0x0f0f0f0f, AX; \
	VMOVD AX, X13; \
	VPBROADCASTD X13, Y13; \
	MOVL $0x00010001, AX; \
	VMOVD AX, X15; \
	VPBROADCASTD X15, Y15

// Q4ROWS1 computes the CX (>= 1) rows left one after the other, each
// line of W prefetched 1536 bytes ahead (as q8DotsSeqAvx2), and returns:
// q4DotsAvx2's last 1-3 rows, and all of q4DotsSeqAvx2's. R11 holds xq
// and R14 groups (the four-row loop's strides, free by then). Each row's
// sum is the four-row loop's (the same accumulator, products and order).
#define Q4ROWS1 \
	MOVQ R13, R14; \
	SHRQ $1, R14; \
q4row1: \
	MOVQ   DI, R10; \
	MOVQ   R11, AX; \
	XORQ   BX, BX; \
	VXORPS Y4, Y4, Y4; \
q4g1: \
	PREFETCHT0 1536(R10); \
	Q4X256; \
	Q4ROW256((R10), (R12), Y4); \
	ADDQ $64, AX; \
	ADDQ $32, R10; \
	ADDQ $2, R12; \
	INCQ BX; \
	CMPQ BX, R14; \
	JLT  q4g1; \
	HSUM256(Y4, X4, X10, X11, 0(R9)); \
	ADDQ SI, DI; \
	ADDQ $4, R9; \
	DECQ CX; \
	JNZ  q4row1; \
	VZEROUPPER; \
	RET

// func q4DotsAvx2(rows, groups int, w *byte, stride int, d *uint16, xq *int8, xs *float32, xsum *int32, out *float32)
TEXT ·q4DotsAvx2(SB), NOSPLIT, $0-72
	MOVQ rows+0(FP), CX
	MOVQ groups+8(FP), R13
	MOVQ w+16(FP), DI
	MOVQ stride+24(FP), SI
	MOVQ d+32(FP), R12
	MOVQ xs+48(FP), R8
	MOVQ xsum+56(FP), DX
	MOVQ out+64(FP), R9
	Q4CONSTS
	CMPQ CX, $4
	JLT  q4y_tail

q4y_loop4:
	MOVQ   DI, R10
	MOVQ   xq+40(FP), AX
	XORQ   BX, BX
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7

q4y_g4:
	Q4X256
	Q4ROW256((R10), (R12), Y4)
	Q4ROW256((R10)(SI*1), (R12)(R13*1), Y5)
	Q4ROW256((R10)(SI*2), (R12)(R13*2), Y6)
	Q4ROW256((R10)(R11*1), (R12)(R14*1), Y7)
	ADDQ $64, AX
	ADDQ $32, R10
	ADDQ $2, R12
	INCQ BX
	CMPQ BX, groups+8(FP)
	JLT  q4y_g4

	HSUM256(Y4, X4, X10, X11, 0(R9))
	HSUM256(Y5, X5, X10, X11, 4(R9))
	HSUM256(Y6, X6, X10, X11, 8(R9))
	HSUM256(Y7, X7, X10, X11, 12(R9))
	LEAQ (DI)(SI*4), DI
	ADDQ R14, R12
	ADDQ $16, R9
	SUBQ $4, CX
	CMPQ CX, $4
	JGE  q4y_loop4

q4y_tail:
	TESTQ CX, CX
	JZ    q4y_done
	MOVQ xq+40(FP), R11
	Q4ROWS1

q4y_done:
	VZEROUPPER
	RET

// func q4DotsSeqAvx2(rows, groups int, w *byte, stride int, d *uint16, xq *int8, xs *float32, xsum *int32, out *float32)
//
// q4DotsAvx2 one row after the other (see gemvSequential): every row
// through Q4ROWS1, so each sum is q4DotsAvx2's bit for bit.
TEXT ·q4DotsSeqAvx2(SB), NOSPLIT, $0-72
	MOVQ rows+0(FP), CX
	MOVQ groups+8(FP), R13
	MOVQ w+16(FP), DI
	MOVQ stride+24(FP), SI
	MOVQ d+32(FP), R12
	MOVQ xs+48(FP), R8
	MOVQ xsum+56(FP), DX
	MOVQ out+64(FP), R9
	Q4CONSTS
	TESTQ CX, CX
	JZ    q4s2_done
	MOVQ xq+40(FP), R11
	Q4ROWS1

q4s2_done:
	VZEROUPPER
	RET
