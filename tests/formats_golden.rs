//! The CPU reference formats against bitsandbytes' own CUDA output (the golden vectors).
//!
//! Every case is discovered from the golden file's keys. Exactness follows
//! `tests/fixtures/golden/README.md`: bit-exact except where bitsandbytes' `--use_fast_math`
//! reciprocals make the GPU land on the other side of a decision threshold, which is only
//! allowed where the input really sits within a few ulps of that threshold.

mod common;

use std::collections::BTreeSet;

use burn_bnb::formats::{
    Absmax, Blockwise8, DoubleQuant, FloatDtype, Int8Rows, Quant4Config, QuantType, Quantized4,
    bf16, code, dynamic_map_signed, f16, int8_matmul, int8_mm_dequant, linear_8bit_lt,
};
use common::golden::Golden;

/// One `q4.{type}.b{blocksize}.dq{0|1}.{dtype}.{R}x{C}` case of the golden file.
#[derive(Debug, Clone)]
struct Q4Case {
    prefix: String,
    quant_type: QuantType,
    blocksize: usize,
    double_quant: bool,
    dtype: FloatDtype,
    shape: Vec<usize>,
    input_key: String,
}

fn q4_cases(g: &Golden) -> Vec<Q4Case> {
    let mut cases = Vec::new();
    for key in g.keys() {
        let Some(prefix) = key.strip_suffix(".packed") else {
            continue;
        };
        let parts: Vec<&str> = prefix.split('.').collect();
        let [_, qt, b, dq, dt, shape] = parts[..] else {
            panic!("unexpected 4-bit key {key}")
        };
        let shape: Vec<usize> = shape.split('x').map(|s| s.parse().unwrap()).collect();
        cases.push(Q4Case {
            prefix: prefix.to_string(),
            quant_type: qt.parse().unwrap(),
            blocksize: b.trim_start_matches('b').parse().unwrap(),
            double_quant: dq == "dq1",
            dtype: match dt {
                "f32" => FloatDtype::F32,
                "f16" => FloatDtype::F16,
                "bf16" => FloatDtype::BF16,
                other => panic!("dtype {other}"),
            },
            input_key: format!("input.{dt}.{}", parts[5]),
            shape,
        });
    }
    assert!(!cases.is_empty(), "no 4-bit cases in {}", g.path.display());
    cases
}

/// The golden quantization of a case, as the reference type.
fn golden_quantized(g: &Golden, c: &Q4Case) -> Quantized4 {
    let absmax = if c.double_quant {
        let code: [f32; 256] = g
            .f32(&format!("{}.state2.code", c.prefix))
            .try_into()
            .unwrap();
        Absmax::Double(DoubleQuant {
            codes: g.u8(&format!("{}.absmax_q", c.prefix)),
            offset: g.f32(&format!("{}.offset", c.prefix))[0],
            nested_absmax: g.f32(&format!("{}.state2.absmax", c.prefix)),
            nested_code: Box::new(code),
            nested_blocksize: state2_blocksize(g, &c.prefix),
        })
    } else {
        Absmax::Plain(g.f32(&format!("{}.absmax", c.prefix)))
    };
    Quantized4 {
        quant_type: c.quant_type,
        blocksize: c.blocksize,
        dtype: c.dtype,
        shape: c.shape.clone(),
        packed: g.u8(&format!("{}.packed", c.prefix)),
        absmax,
    }
}

fn state2_blocksize(g: &Golden, prefix: &str) -> usize {
    let extra: serde_json::Value =
        serde_json::from_str(&g.metadata("extra").expect("`extra` metadata"))
            .expect("`extra` is JSON");
    extra[prefix]["state2_blocksize"]
        .as_u64()
        .expect("state2_blocksize") as usize
}

fn quantize_input(g: &Golden, c: &Q4Case) -> Quantized4 {
    let config = Quant4Config {
        quant_type: c.quant_type,
        blocksize: c.blocksize,
        double_quant: false,
    };
    match c.dtype {
        FloatDtype::F32 => Quantized4::quantize(&g.f32(&c.input_key), &c.shape, config),
        FloatDtype::F16 => Quantized4::quantize(&g.f16(&c.input_key), &c.shape, config),
        FloatDtype::BF16 => Quantized4::quantize(&g.bf16(&c.input_key), &c.shape, config),
    }
    .unwrap()
}

fn nudged(x: f32, ulps: i32) -> f32 {
    f32::from_bits((x.to_bits() as i32 + ulps) as u32)
}

#[test]
fn code_tables_match_bitsandbytes() {
    let g = Golden::kernels();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&g.f32("code.nf4")), bits(&code::NF4_CODE));
    assert_eq!(bits(&g.f32("code.fp4")), bits(&code::FP4_CODE));
    assert_eq!(bits(&g.f32("code.dynamic")), bits(&dynamic_map_signed()));
}

#[test]
fn dequantize_4bit_is_bit_exact() {
    let g = Golden::kernels();
    for c in q4_cases(&g) {
        let q = golden_quantized(&g, &c);
        let ours = q.dequantize_f32().unwrap();
        let theirs = g.float(&format!("{}.dequant", c.prefix));
        assert_eq!(ours.len(), theirs.len(), "{}", c.prefix);
        let diff = ours
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(diff, 0, "{}: {diff} dequantized elements differ", c.prefix);
    }
}

#[test]
fn quantize_4bit_matches_bitsandbytes() {
    let g = Golden::kernels();
    let mut ties = 0usize;
    let mut total = 0usize;
    for c in q4_cases(&g).into_iter().filter(|c| !c.double_quant) {
        let ours = quantize_input(&g, &c);
        let theirs = golden_quantized(&g, &c);
        let (Absmax::Plain(a), Absmax::Plain(b)) = (&ours.absmax, &theirs.absmax) else {
            unreachable!()
        };
        assert_eq!(a, b, "{}: absmax", c.prefix);

        let input = g.float(&c.input_key);
        for (i, &x) in input.iter().enumerate() {
            let (mine, bnb) = (ours.code_at(i), theirs.code_at(i));
            total += 1;
            if mine == bnb {
                continue;
            }
            // Only a true tie may differ: the GPU's approximate 1/absmax puts x*r on the other
            // side of a threshold. Then a reciprocal a couple of ulps away reproduces its code.
            let r = 1.0f32 / a[i / c.blocksize];
            let reachable: BTreeSet<u8> = (-2..=2)
                .map(|u| c.quant_type.quantize_value(x * nudged(r, u)))
                .collect();
            assert!(
                c.quant_type == QuantType::Fp4
                    && c.dtype != FloatDtype::F32
                    && reachable.contains(&bnb),
                "{}: element {i} (x = {x}): code {mine}, bitsandbytes {bnb}",
                c.prefix
            );
            ties += 1;
        }
    }
    // The README counts 38 such ties over all 16-bit FP4 cases; a wrong tree would give thousands.
    println!("{ties} of {total} codes differ from bitsandbytes, all at fast-math reciprocal ties");
    assert!(ties * 1000 < total, "{ties} ties of {total}");
}

#[test]
fn double_quantization_matches_bitsandbytes() {
    let g = Golden::kernels();
    for c in q4_cases(&g).into_iter().filter(|c| c.double_quant) {
        let plain = quantize_input(&g, &c);
        let Absmax::Plain(absmax) = &plain.absmax else {
            unreachable!()
        };
        let theirs = golden_quantized(&g, &c);
        let Absmax::Double(bnb) = &theirs.absmax else {
            unreachable!()
        };

        let ours = DoubleQuant::compress(absmax).unwrap();
        assert_eq!(
            ours.offset.to_bits(),
            bnb.offset.to_bits(),
            "{}: offset",
            c.prefix
        );
        assert_eq!(ours.codes, bnb.codes, "{}: absmax codes", c.prefix);
        assert_eq!(
            ours.nested_absmax, bnb.nested_absmax,
            "{}: nested absmax",
            c.prefix
        );
        assert_eq!(ours.nested_blocksize, bnb.nested_blocksize, "{}", c.prefix);
        assert_eq!(
            &ours.nested_code[..],
            &bnb.nested_code[..],
            "{}: nested code",
            c.prefix
        );
        // And the packed data is the plain quantization's: DQ only touches the absmax.
        assert_eq!(plain.packed.len(), theirs.packed.len());
    }
}

#[test]
fn blockwise_8bit_matches_bitsandbytes() {
    let g = Golden::kernels();
    let input = g.f32("q8.input");
    let absmax = g.f32("q8.absmax");
    let blocksize = input.len().div_ceil(absmax.len());
    let code: [f32; 256] = g.f32("code.dynamic").try_into().unwrap();
    let q = Blockwise8::quantize(&input, &code, blocksize).unwrap();
    assert_eq!(q.absmax, absmax);
    assert_eq!(q.codes, g.u8("q8.codes"));
    assert_eq!(q.dequantize(&code).unwrap(), g.f32("q8.dequant"));
}

/// Codes may differ by one only where `x * 127 / absmax` is within a few ulps of a .5.
fn assert_int8_codes_close(what: &str, input: &[f32], cols: usize, ours: &Int8Rows, bnb: &[i8]) {
    let mut off = 0;
    for (i, (&a, &b)) in ours.codes.iter().zip(bnb).enumerate() {
        if a == b {
            continue;
        }
        let v = input[i] * (127.0f32 / ours.absmax[i / cols]);
        let frac = (v - v.floor() - 0.5).abs();
        assert!(
            (a as i32 - b as i32).abs() == 1 && frac <= 8.0 * f32::EPSILON * v.abs().max(1.0),
            "{what}: element {i}: ours {a}, bitsandbytes {b}, x*127/absmax = {v}"
        );
        off += 1;
    }
    assert!(off * 500 <= bnb.len(), "{what}: {off} codes off by one");
}

#[test]
fn int8_vectorwise_quant_matches_bitsandbytes() {
    let g = Golden::kernels();
    for name in ["W", "x"] {
        let data = g.f16(&format!("int8.{name}"));
        let shape = g.shape(&format!("int8.{name}"));
        let q = Int8Rows::quantize(&data, shape[0], shape[1], 0.0).unwrap();
        assert_eq!(
            q.absmax,
            g.f32(&format!("int8.{name}_scale")),
            "int8.{name}: row absmax"
        );
        let input: Vec<f32> = data.iter().map(|x| x.to_f32()).collect();
        assert_int8_codes_close(
            &format!("int8.{name}"),
            &input,
            shape[1],
            &q,
            &g.i8(&format!("int8.{name}_q")),
        );
    }
}

#[test]
fn int8_product_and_dequant_match_bitsandbytes() {
    let g = Golden::kernels();
    let (xs, ws) = (g.shape("int8.x_q"), g.shape("int8.W_q"));
    let (m, k, n) = (xs[0], xs[1], ws[0]);
    let acc = int8_matmul(&g.i8("int8.x_q"), &g.i8("int8.W_q"), m, n, k).unwrap();
    assert_eq!(acc, g.i32("int8.acc"), "int32 products are exact");

    let y = int8_mm_dequant(&acc, &g.f32("int8.x_scale"), &g.f32("int8.W_scale"), None).unwrap();
    let reference = g.f16("int8.y");
    let mut off = 0;
    for (a, b) in y.iter().zip(&reference) {
        if a != b {
            assert_eq!(
                (a.to_bits() as i32 - b.to_bits() as i32).abs(),
                1,
                "{a} vs {b}: more than an ulp"
            );
            off += 1;
        }
    }
    // bitsandbytes' fused multiply order leaves a few one-ulp differences (README: 2 of 4,096).
    assert!(
        off * 1000 <= reference.len(),
        "{off} dequantized values differ"
    );
}

#[test]
fn linear_8bit_lt_matches_bitsandbytes() {
    let g = Golden::kernels();
    let ws = g.shape("int8.W_q");
    let weight = Int8Rows {
        codes: g.i8("int8.W_q"),
        absmax: g.f32("int8.W_scale"),
        rows: ws[0],
        cols: ws[1],
        outlier_cols: Vec::new(),
    };
    let x = g.f16("int8.x");
    let m = g.shape("int8.x")[0];
    let bias = g.f16("lin8.bias");
    for key in g
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("lin8.th") && k.ends_with(".y"))
    {
        let threshold: f32 = key["lin8.th".len()..key.len() - 2].parse().unwrap();
        let ours = linear_8bit_lt(&x, m, &weight, Some(&bias), threshold).unwrap();
        let reference = g.f16(&key);
        // bitsandbytes' test_linear8bitlt: < 0.025 % beyond atol 0.02, all within atol 0.03.
        let (mut beyond, mut max_err) = (0usize, 0f32);
        for (a, b) in ours.iter().zip(&reference) {
            let err = (a.to_f32() - b.to_f32()).abs();
            max_err = max_err.max(err);
            beyond += usize::from(err > 0.02);
        }
        println!("{key}: max abs error {max_err}, {beyond} beyond 0.02");
        assert!(
            max_err <= 0.03 + 1e-5 * max_abs(&reference),
            "{key}: max error {max_err}"
        );
        assert!(
            beyond as f64 <= 0.00025 * reference.len() as f64,
            "{key}: {beyond} beyond 0.02"
        );
        if threshold > 0.0 {
            // The planted outlier columns must really go through the 16-bit path.
            let q = Int8Rows::quantize(&x, m, ws[1], threshold).unwrap();
            assert!(!q.outlier_cols.is_empty(), "{key}: no outliers detected");
        }
    }
}

fn max_abs(v: &[f16]) -> f32 {
    v.iter().fold(0.0, |m, x| m.max(x.to_f32().abs()))
}

/// bitsandbytes' `test_4bit_quant` limits (mean + 7σ, spec §9.1) on N(0, 1) data.
#[test]
fn round_trip_error_matches_bitsandbytes_statistics() {
    use rand::{Rng, SeedableRng};
    #[rustfmt::skip]
    let limits: [(QuantType, usize, f64, f64); 16] = [
        (QuantType::Nf4, 32, 0.068229, 0.191854), (QuantType::Nf4, 64, 0.073316, 0.205719),
        (QuantType::Nf4, 128, 0.077468, 0.217974), (QuantType::Nf4, 256, 0.081051, 0.228891),
        (QuantType::Nf4, 512, 0.084548, 0.239887), (QuantType::Nf4, 1024, 0.087919, 0.249570),
        (QuantType::Nf4, 2048, 0.091349, 0.259392), (QuantType::Nf4, 4096, 0.095067, 0.269466),
        (QuantType::Fp4, 32, 0.089562, 0.244753), (QuantType::Fp4, 64, 0.097320, 0.262778),
        (QuantType::Fp4, 128, 0.103907, 0.278848), (QuantType::Fp4, 256, 0.109958, 0.293310),
        (QuantType::Fp4, 512, 0.115753, 0.306962), (QuantType::Fp4, 1024, 0.121573, 0.320299),
        (QuantType::Fp4, 2048, 0.127741, 0.333292), (QuantType::Fp4, 4096, 0.133820, 0.345842),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let data: Vec<f32> = (0..1024 * 1024)
        .map(|_| rng.sample(rand_distr::StandardNormal))
        .collect();
    for (qt, bs, err_limit, rel_limit) in limits {
        let config = Quant4Config {
            quant_type: qt,
            blocksize: bs,
            double_quant: false,
        };
        let back = Quantized4::quantize(&data, &[1024, 1024], config)
            .unwrap()
            .dequantize_f32()
            .unwrap();
        let n = data.len() as f64;
        let err = data
            .iter()
            .zip(&back)
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>()
            / n;
        let rel = data
            .iter()
            .zip(&back)
            .map(|(a, b)| ((a - b).abs() / (a.abs() + 1e-8)) as f64)
            .sum::<f64>()
            / n;
        println!("{qt} bs {bs}: mean abs error {err:.6}, mean rel error {rel:.6}");
        assert!(
            err < err_limit,
            "{qt} bs {bs}: mean abs error {err} >= {err_limit}"
        );
        assert!(
            rel < rel_limit,
            "{qt} bs {bs}: mean rel error {rel} >= {rel_limit}"
        );
        // A bug that halves the error is as wrong as one that doubles it.
        assert!(
            err > err_limit * 0.97,
            "{qt} bs {bs}: mean abs error {err} implausibly small"
        );
    }
}

#[test]
fn sixteen_bit_inputs_round_trip_through_their_dtype() {
    // Dequantization returns the input's dtype, rounded once from the f32 product.
    let g = Golden::kernels();
    for c in q4_cases(&g)
        .into_iter()
        .filter(|c| c.dtype == FloatDtype::BF16)
        .take(1)
    {
        let q = golden_quantized(&g, &c);
        let as_bf16: Vec<bf16> = q.dequantize().unwrap();
        let as_f32 = q.dequantize_f32().unwrap();
        assert!(as_bf16.iter().zip(&as_f32).all(|(a, b)| a.to_f32() == *b));
    }
}
