//! `#[cube]` building blocks shared by the kernels: nibble extraction, block-scale decoding
//! (plain or double-quantized), bitsandbytes' 4-bit decision trees and float16 rounding.

use cubecl::prelude::*;

/// The code of element `j` (0..8) of a little-endian word of packed nibbles: bytes in memory
/// order, the first element of each byte in its high nibble.
#[cube]
pub(crate) fn nibble(word: u32, j: u32) -> u32 {
    // byte j/2 sits at bit 8*(j/2); even elements are its high nibble.
    (word >> ((j / 2) * 8 + 4 - (j % 2) * 4)) & 15u32
}

/// The byte `b` (0..4) of a little-endian word.
#[cube]
pub(crate) fn byte_of(word: u32, b: u32) -> u32 {
    (word >> (b * 8)) & 255u32
}

/// The int8 `b` (0..4) of a little-endian word, sign-extended.
#[cube]
pub(crate) fn i8_of(word: u32, b: u32) -> i32 {
    i32::reinterpret(word << (24 - b * 8)) >> 24
}

/// The scale of 4-bit block `block`: `absmax[block]`, or with double quantization
/// `f32(f32(nested_code[codes[block]] * nested_absmax[block >> nested_shift]) +
/// offset[block >> offset_shift])`: `offset_shift` is `nested_shift` where every nested group
/// has its own offset (stacked weights), 31 for bitsandbytes' one offset a tensor.
///
/// `zero` is a runtime 0: XOR-ing the product's bits with it hides the product from the
/// compiler, so that it cannot contract multiply and add into one FMA (NVRTC does so by
/// default), which would round once instead of twice and miss bitsandbytes' values by an ulp.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn block_scale<D: CubePrimitive>(
    block: u32,
    absmax: &Array<f32>,
    dq_codes: &Array<D>,
    nested_absmax: &Array<f32>,
    nested_code: &Array<f32>,
    offset: &Array<f32>,
    nested_shift: u32,
    offset_shift: u32,
    zero: u32,
    #[comptime] dq: bool,
) -> f32 {
    if dq {
        let word = u32::cast_from(dq_codes[(block / 4) as usize]);
        let q = byte_of(word, block % 4);
        let product = nested_code[q as usize] * nested_absmax[(block >> nested_shift) as usize];
        let product = f32::reinterpret(u32::reinterpret(product) ^ zero);
        product + offset[(block >> offset_shift) as usize]
    } else {
        absmax[block as usize]
    }
}

/// `dQuantizeNF4`: the 4-bit tree over the midpoints of the NF4 table, strict `>` (a value on a
/// midpoint goes to the lower code), NaN to code 0.
#[cube]
#[allow(clippy::excessive_precision)]
pub(crate) fn quantize_nf4(x: f32) -> u32 {
    let mut q = 0u32;
    if x > 0.039_790_149_778_127_67f32 {
        if x > 0.389_312_535_524_368_3f32 {
            if x > 0.642_786_920_070_648_2f32 {
                if x > 0.861_478_418_111_801_1f32 {
                    q = 15u32;
                } else {
                    q = 14u32;
                }
            } else if x > 0.501_663_416_624_069_2f32 {
                q = 13u32;
            } else {
                q = 12u32;
            }
        } else if x > 0.203_521_251_678_466_8f32 {
            if x > 0.292_013_771_831_989_3f32 {
                q = 11u32;
            } else {
                q = 10u32;
            }
        } else if x > 0.120_255_250_484_751_3f32 {
            q = 9u32;
        } else {
            q = 8u32;
        }
    } else if x > -0.339_679_434_895_515_44f32 {
        if x > -0.137_911_733_239_889_14f32 {
            if x > -0.045_525_018_125_772_476f32 {
                q = 7u32;
            } else {
                q = 6u32;
            }
        } else if x > -0.234_607_405_960_559_84f32 {
            q = 5u32;
        } else {
            q = 4u32;
        }
    } else if x > -0.610_632_926_225_662_2f32 {
        if x > -0.459_995_269_775_390_6f32 {
            q = 3u32;
        } else {
            q = 2u32;
        }
    } else if x > -0.848_096_400_499_343_9f32 {
        q = 1u32;
    }
    q
}

/// `dQuantizeFP4`: sign bit iff `x < 0`, then a tree on `|x|` with bitsandbytes' thresholds.
#[cube]
#[allow(clippy::excessive_precision)]
pub(crate) fn quantize_fp4(x: f32) -> u32 {
    let mut sign = 0u32;
    if x < 0.0f32 {
        sign = 8u32;
    }
    let a = f32::abs(x);
    let mut q = 0u32;
    if a > 0.291_666_67f32 {
        if a > 0.583_333f32 {
            if a > 0.833_333_3f32 {
                q = 3u32;
            } else {
                q = 2u32;
            }
        } else if a > 0.416_666_7f32 {
            q = 5u32;
        } else {
            q = 4u32;
        }
    } else if a > 0.085_937_5f32 {
        if a > 0.208_333_33f32 {
            q = 7u32;
        } else {
            q = 6u32;
        }
    } else if a > 0.002_604_17f32 {
        q = 1u32;
    }
    q + sign
}

/// Rounds an f32 to the nearest float16 (ties to even, overflow to infinity, subnormals kept),
/// returned as f32. Written with integer operations so that it runs where the runtime has no
/// f16 type (WGSL without `shader-f16`).
#[cube]
pub(crate) fn round_to_f16(x: f32) -> f32 {
    let bits = u32::reinterpret(x);
    let sign = bits & 0x8000_0000u32;
    let abs = bits & 0x7FFF_FFFFu32;
    // inf and NaN stay as they are.
    let mut out = abs;
    if abs < 0x7F80_0000u32 {
        if abs >= 0x477F_F000u32 {
            // 65520 and above round to infinity.
            out = 0x7F80_0000u32;
        } else if abs < 0x3880_0000u32 {
            // Below 2^-14: float16 subnormals, a grid of 2^-24. Scaling by powers of two is exact.
            let scaled = f32::reinterpret(abs) * 16_777_216.0f32;
            let rounded = f32::round(scaled);
            out = u32::reinterpret(rounded * 5.960_464_5e-8f32);
        } else {
            // Keep 10 of the 23 mantissa bits, ties to even; a carry moves into the exponent.
            let lsb = (abs >> 13) & 1u32;
            out = (abs + 0x0FFFu32 + lsb) & 0xFFFF_E000u32;
        }
    }
    f32::reinterpret(sign | out)
}

/// The maximum of `value` over each segment of `segment` consecutive units (a power of two
/// dividing the cube size), through `red` (one slot per unit). Every unit gets its segment's max.
#[cube]
pub(crate) fn segment_max(
    red: &mut SharedMemory<f32>,
    value: f32,
    #[comptime] segment: u32,
) -> f32 {
    segment_fold(red, value, segment, false)
}

/// The sum of `value` over each segment of `segment` consecutive units, as [`segment_max()`]
/// (a tree: the order of the additions depends only on `segment`).
#[cube]
pub(crate) fn segment_sum(
    red: &mut SharedMemory<f32>,
    value: f32,
    #[comptime] segment: u32,
) -> f32 {
    segment_fold(red, value, segment, true)
}

#[cube]
fn segment_fold(
    red: &mut SharedMemory<f32>,
    value: f32,
    #[comptime] segment: u32,
    #[comptime] sum: bool,
) -> f32 {
    red[UNIT_POS as usize] = value;
    sync_cube();
    let lane = UNIT_POS % segment;
    let mut stride = comptime!(segment / 2).runtime();
    while stride > 0 {
        if lane < stride {
            let other = red[(UNIT_POS + stride) as usize];
            if comptime!(sum) {
                red[UNIT_POS as usize] += other;
            } else {
                red[UNIT_POS as usize] = max(red[UNIT_POS as usize], other);
            }
        }
        sync_cube();
        stride /= 2;
    }
    red[(UNIT_POS - lane) as usize]
}

/// The bitwise OR of `value` over each segment of `segment` consecutive units (a power of two
/// dividing the cube size), through `red` (one slot per unit). Every unit gets its segment's OR.
#[cube]
pub(crate) fn segment_or(red: &mut SharedMemory<u32>, value: u32, #[comptime] segment: u32) -> u32 {
    red[UNIT_POS as usize] = value;
    sync_cube();
    let lane = UNIT_POS % segment;
    let mut stride = comptime!(segment / 2).runtime();
    while stride > 0 {
        if lane < stride {
            let other = red[(UNIT_POS + stride) as usize];
            red[UNIT_POS as usize] |= other;
        }
        sync_cube();
        stride /= 2;
    }
    red[(UNIT_POS - lane) as usize]
}

/// The activation `v` as f16 (rounded unless it is f16 already, `round == false`), as f32.
#[cube]
pub(crate) fn as_f16<F: Float>(v: F, #[comptime] round: bool) -> f32 {
    if round {
        round_to_f16(f32::cast_from(v))
    } else {
        f32::cast_from(v)
    }
}

/// Sums each of the `count` per-unit partials `acc[i]` over the cube: plane sums then shared
/// memory when `plane > 0` (the plane size), a shared-memory tree otherwise. Unit `i < count`
/// returns the total of slot `i`; the other units return 0.
#[cube]
pub(crate) fn cube_sum<N: Numeric>(
    acc: &Array<N>,
    #[comptime] count: u32,
    #[comptime] cube_size: u32,
    #[comptime] plane: u32,
) -> N {
    let mut total = N::from_int(0);
    if comptime!(plane > 0) {
        let planes = comptime!(cube_size / plane);
        let mut red = SharedMemory::<N>::new(comptime!((planes * count) as usize));
        let pid = UNIT_POS / plane;
        let lane = UNIT_POS % plane;
        #[unroll]
        for i in 0..count {
            let v = plane_sum(acc[i as usize]);
            if lane == 0 {
                red[(pid * count + i) as usize] = v;
            }
        }
        sync_cube();
        if UNIT_POS < count {
            #[unroll]
            for p in 0..planes {
                total += red[(p * count + UNIT_POS) as usize];
            }
        }
    } else {
        let mut red = SharedMemory::<N>::new(comptime!((cube_size * count) as usize));
        #[unroll]
        for i in 0..count {
            red[(i * cube_size + UNIT_POS) as usize] = acc[i as usize];
        }
        sync_cube();
        let mut stride = comptime!(cube_size / 2).runtime();
        while stride > 0 {
            if UNIT_POS < stride {
                #[unroll]
                for i in 0..count {
                    let other = red[(i * cube_size + UNIT_POS + stride) as usize];
                    red[(i * cube_size + UNIT_POS) as usize] += other;
                }
            }
            sync_cube();
            stride /= 2;
        }
        if UNIT_POS < count {
            total = red[(UNIT_POS * cube_size) as usize];
        }
    }
    total
}
