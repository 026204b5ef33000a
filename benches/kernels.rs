//! Criterion benches of the burn-bnb kernels on CUDA at the Llama-3.1-8B layer shapes
//! (N x K = 4096x4096, 4096x14336, 14336x4096, 1024x4096; M = 1, 8, 32), next to the dense bf16
//! product of the same shape, burn's matmul and this project's (`matmul_dense`).
//!
//! Every format reads its weight from one of 4 rotating copies (more bytes than the H100's 50 MB
//! L2), so each call streams its weight from device memory. Reported per call: the median time
//! of back-to-back calls (`us`, host clock around a synchronized batch: what a caller without CUDA
//! graphs sees, launch overhead included), the host time to enqueue one call (`host_us`; when it
//! is close to `us` the number is bound by launch overhead, not by the kernel), and the bandwidth
//! of the weight bytes (packed codes + absmax for 4-bit, codes + row scales for int8, 2 bytes per
//! weight for bf16) against the copy bandwidth measured in the same process.
//!
//! ```text
//! cargo bench --bench kernels                      # criterion + summary
//! BNB_BENCH_OUT=dir cargo bench --bench kernels    # also writes dir/kernels.{json,md}
//! BNB_SWEEP=1 ...                                  # also times kernel variants
//! BNB_NCU=1 ...                                    # no timing: each case launched twice between
//!                                                  # marker kernels, for `ncu` device times
//! BNB_BATCHES=1,8 ...                              # only these batch sizes (default 1,8,32;
//!                                                  # above 64 rows: prefill, dense kernels only)
//! BNB_SHAPES=57344x8192,8192x28672 ...             # these N x K weight shapes instead
//! BNB_CASES=nf4,Mma ...                            # only cases whose "format variant" holds
//!                                                  # one of these substrings
//! BNB_MMA_SPLITS=3,6,12 ...                       # with BNB_SWEEP: the register-fragment
//!                                                  # kernel at these split-K counts instead
//! BNB_PATTERNS=1 ...                               # only the bandwidth of the 4-bit products'
//!                                                  # weight access pattern, no compute
//! ```
//! Without a CUDA device the bench prints why and exits successfully.

use std::time::{Duration, Instant};

use burn_backend::{DType, Shape};
use burn_bnb_kernels::int8::Int8Strategy;
use burn_bnb_kernels::{
    CmmaParams, Int8Matrix, Matmul4Strategy, MmaParams, Quant4Options, Quant4Weight, SimtParams,
    hopper_gemm_supported, int8_matmul_dequant_with, int8_quantize_rows, linear_8bit_lt,
    matmul_4bit_with, matmul_dense, matmul_dense_with, matmul_hopper, quantize_4bit,
};
use burn_cubecl::kernel::matmul::{MatmulStrategy, matmul};
use burn_cubecl::kernel::prng::random_normal;
use burn_cubecl::tensor::CubeTensor;
use criterion::Criterion;
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::prelude::*;

type R = CudaRuntime;

const SHAPES: [(usize, usize); 4] = [(4096, 4096), (4096, 14336), (14336, 4096), (1024, 4096)];
const BATCHES: [usize; 3] = [1, 8, 32];
/// Rotating weight copies: 4 x 29 MB of NF4 at 14336x4096 is more than the L2.
const COPIES: usize = 4;
/// Batches above this many rows are prefill products: only the dense kernels are timed.
const PREFILL_MIN_ROWS: usize = 64;

#[cube(launch)]
fn copy_kernel(input: &Array<Line<u32>>, output: &mut Array<Line<u32>>) {
    if ABSOLUTE_POS < input.len() {
        output[ABSOLUTE_POS] = input[ABSOLUTE_POS];
    }
}

/// Reads a 4-bit weight's bytes as the register-fragment product does, with no
/// compute: a warp owns 32 weight rows and a K slice; each step, `lanes_per_row` lanes read
/// consecutive 16-byte lines of each row (4: the products' 64-byte runs), `unroll` steps a
/// loop iteration. With `contiguous` the warp's step tile is stored contiguously instead
/// (each load instruction reads 512 consecutive bytes: a Marlin-style repacked layout).
#[cube(launch_unchecked)]
fn read_pattern_kernel(
    w: &Array<Line<u32>>,
    out: &mut Array<u32>,
    row_lines: u32,
    steps: u32,
    groups: u32,
    #[comptime] lanes_per_row: u32,
    #[comptime] unroll: u32,
    #[comptime] contiguous: bool,
) {
    let id = CUBE_POS as u32;
    let group = id % groups;
    let split = id / groups;
    let warp = UNIT_POS / 32;
    let lane = UNIT_POS % 32;
    let rows_per_load = comptime!(32 / lanes_per_row);
    let warp_id = group * 4 + warp;
    let base = warp_id * 32 + lane / lanes_per_row;
    let t = lane % lanes_per_row;
    let mut acc = 0u32;
    let mut s = split * steps;
    let end = s + steps;
    while s < end {
        #[unroll]
        for u in 0..unroll {
            #[unroll]
            for i in 0..lanes_per_row {
                let idx = if contiguous {
                    ((warp_id * (row_lines / lanes_per_row) + s + u) * lanes_per_row + i) * 32
                        + lane
                } else {
                    (base + i * rows_per_load) * row_lines + (s + u) * lanes_per_row + t
                };
                let v = w[idx as usize];
                acc ^= v[0] ^ v[1] ^ v[2] ^ v[3];
            }
        }
        s += unroll;
    }
    out[ABSOLUTE_POS] = acc;
}

/// `BNB_PATTERNS=1`: the bandwidth of [`read_pattern_kernel`]'s access patterns over a
/// 28672x4096 4-bit weight (the gate/up product of Llama-3.1-8B), two copies alternating.
fn read_patterns(ctx: &Ctx, copy_gbps: f64) {
    let (n, k) = (28672usize, 4096usize);
    let bytes = n * k / 2;
    let row_lines = (k / 32) as u32;
    let bufs = [ctx.client.empty(bytes), ctx.client.empty(bytes)];
    let groups = (n / 128) as u32;
    for (lanes_per_row, unroll, contiguous) in [
        (4, 1, false),
        (4, 2, false),
        (4, 4, false),
        (8, 1, false),
        (8, 2, false),
        (32, 1, false),
        (32, 2, false),
        (4, 1, true),
        (4, 2, true),
        (4, 4, true),
    ] {
        for splits in [2u32, 4, 8] {
            let steps = row_lines / lanes_per_row / splits;
            if steps < 2 || !steps.is_multiple_of(unroll) {
                continue;
            }
            let cubes = groups * splits;
            let out = ctx.client.empty(cubes as usize * 128 * 4);
            let launch = |i: usize| {
                // SAFETY: every index is below `n * row_lines` lines (rows < n, columns and
                // tile offsets below `row_lines`); `out` holds a word per unit.
                unsafe {
                    read_pattern_kernel::launch_unchecked::<R>(
                        &ctx.client,
                        CubeCount::Static(cubes, 1, 1),
                        CubeDim::new_1d(128),
                        ArrayArg::from_raw_parts::<u32>(&bufs[i % 2], bytes / 4, 4),
                        ArrayArg::from_raw_parts::<u32>(&out, cubes as usize * 128, 1),
                        ScalarArg::new(row_lines),
                        ScalarArg::new(steps),
                        ScalarArg::new(groups),
                        lanes_per_row,
                        unroll,
                        contiguous,
                    )
                    .unwrap();
                }
            };
            for i in 0..4 {
                launch(i);
            }
            ctx.sync();
            let mut times: Vec<f64> = (0..7)
                .map(|_| {
                    let start = Instant::now();
                    for i in 0..20 {
                        launch(i);
                    }
                    ctx.sync();
                    start.elapsed().as_secs_f64() / 20.0
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let gbps = bytes as f64 / times[3] / 1e9;
            eprintln!(
                "pattern lanes/row {lanes_per_row:>2} unroll {unroll} contiguous {contiguous:<5} \
                 splits {splits}: {:>6.1} us {gbps:>6.0} GB/s {:>4.0}% of copy",
                times[3] * 1e6,
                100.0 * gbps / copy_gbps
            );
        }
    }
}

/// A kernel with a recognizable name that separates the cases in an `ncu` log.
#[cube(launch)]
fn bnb_bench_marker_kernel(output: &mut Array<u32>, id: u32) {
    if ABSOLUTE_POS == 0 {
        output[0] = id;
    }
}

struct Ctx {
    client: ComputeClient<R>,
    device: CudaDevice,
}

impl Ctx {
    fn sync(&self) {
        cubecl::future::block_on(self.client.sync()).expect("device sync");
    }
}

/// One benchmarked operation: a closure over the call index (weights rotate with it).
struct Case<'a> {
    format: &'static str,
    variant: String,
    weight_bytes: usize,
    run: Box<dyn Fn(usize) + 'a>,
}

#[derive(Debug, Clone)]
struct Row {
    n: usize,
    k: usize,
    m: usize,
    format: &'static str,
    variant: String,
    us: f64,
    host_us: f64,
    gbps: f64,
    copy_fraction: f64,
}

fn main() {
    let Some(ctx) = cuda() else {
        eprintln!("SKIPPED: no CUDA device could be opened");
        return;
    };
    let flag = |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0");
    let ncu = flag("BNB_NCU");
    let sweep = flag("BNB_SWEEP");
    let copy_gbps = if ncu { f64::NAN } else { copy_bandwidth(&ctx) };
    eprintln!("copy bandwidth: {copy_gbps:.0} GB/s (bytes read + written)");
    if flag("BNB_PATTERNS") {
        read_patterns(&ctx, copy_gbps);
        return;
    }

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(600))
        .sample_size(10)
        .configure_from_args();
    let mut rows = Vec::new();
    let mut marker = 0u32;
    let marker_buf = ctx.client.empty(4);

    // Under ncu, a marker precedes every group of kernels, setup included, so that
    // `ncu_summary.py` can attribute each kernel to its case.
    let mut mark = |label: String| {
        if ncu {
            marker += 1;
            eprintln!("ncu-marker {marker}: {label}");
            // SAFETY: a 4-byte buffer, one unit writes it.
            unsafe {
                bnb_bench_marker_kernel::launch::<R>(
                    &ctx.client,
                    CubeCount::Static(1, 1, 1),
                    CubeDim::new_1d(1),
                    ArrayArg::from_raw_parts::<u32>(&marker_buf, 1, 1),
                    ScalarArg::new(marker),
                )
                .unwrap();
            }
        }
    };
    let only: Vec<String> = std::env::var("BNB_CASES")
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let batches = env_list("BNB_BATCHES", "batch sizes", &BATCHES, |m| m.parse().ok());
    let shapes = env_list("BNB_SHAPES", "NxK weight shapes", &SHAPES, |shape| {
        let (n, k) = shape.split_once('x')?;
        Some((n.parse().ok()?, k.parse().ok()?))
    });
    for (n, k) in shapes {
        mark(format!("setup {n}x{k}"));
        let weights = Weights::new(&ctx, n, k);
        for &m in &batches {
            mark(format!("setup {n}x{k} m {m}"));
            let x_bf16 =
                random_normal::<R>(Shape::from(vec![m, k]), &ctx.device, 0.0, 1.0, DType::BF16);
            let x_f16 = burn_cubecl::kernel::cast(x_bf16.clone(), DType::F16);
            let cases = cases(&ctx, &weights, &x_bf16, &x_f16, m, n, k, sweep);
            for case in cases {
                let label = format!("{} {}", case.format, case.variant);
                if !only.is_empty() && !only.iter().any(|s| label.contains(s.as_str())) {
                    continue;
                }
                if ncu && case.format == "bf16 (burn)" {
                    // Its autotuning would launch dozens of candidate kernels under the profiler.
                    continue;
                }
                if ncu {
                    mark(format!("{n}x{k} m {m} {} {}", case.format, case.variant));
                    (case.run)(0);
                    (case.run)(1);
                    ctx.sync();
                    continue;
                }
                let row = measure(&ctx, &case, n, k, m, copy_gbps);
                eprintln!(
                    "{n:>5}x{k:<5} m {m:>2} {:<12} {:<40} {:>8.1} us (host {:>5.1}) {:>6.0} GB/s {:>4.0}% {:>5.0} TFLOP/s",
                    row.format,
                    row.variant,
                    row.us,
                    row.host_us,
                    row.gbps,
                    row.copy_fraction * 100.0,
                    2.0 * (m * n * k) as f64 / row.us / 1e6
                );
                let id = format!("{n}x{k}/m{m}/{}/{}", case.format, case.variant);
                criterion.bench_function(&id, |b| {
                    b.iter_custom(|iters| {
                        ctx.sync();
                        let start = Instant::now();
                        for i in 0..iters as usize {
                            (case.run)(i);
                        }
                        ctx.sync();
                        start.elapsed()
                    })
                });
                rows.push(row);
            }
        }
    }
    if ncu {
        return;
    }
    criterion.final_summary();
    if let Some(dir) = std::env::var_os("BNB_BENCH_OUT") {
        write_results(std::path::Path::new(&dir), &rows, copy_gbps);
    }
}

fn cuda() -> Option<Ctx> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let client = std::panic::catch_unwind(|| R::client(&CudaDevice::default())).ok();
    std::panic::set_hook(hook);
    client.map(|client| Ctx {
        client,
        device: CudaDevice::default(),
    })
}

/// Device-to-device copy of 1 GiB, counting bytes read and written.
fn copy_bandwidth(ctx: &Ctx) -> f64 {
    let bytes = 1usize << 30;
    let a = ctx.client.empty(bytes);
    let b = ctx.client.empty(bytes);
    let lines = bytes / 16;
    let launch = || {
        // SAFETY: both buffers hold `lines` lines of 16 bytes.
        unsafe {
            copy_kernel::launch::<R>(
                &ctx.client,
                cubecl::calculate_cube_count_elemwise(&ctx.client, lines, CubeDim::new_1d(256)),
                CubeDim::new_1d(256),
                ArrayArg::from_raw_parts::<u32>(&a, bytes / 4, 4),
                ArrayArg::from_raw_parts::<u32>(&b, bytes / 4, 4),
            )
            .unwrap();
        }
    };
    launch();
    ctx.sync();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..10 {
                launch();
            }
            ctx.sync();
            start.elapsed().as_secs_f64() / 10.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    2.0 * bytes as f64 / times[2] / 1e9
}

/// The weights of one layer shape in every format, `COPIES` of each.
struct Weights {
    dense: Vec<CubeTensor<R>>,
    /// The same as `[out, in]`, the layout this project's dense kernels read.
    dense_nk: Vec<CubeTensor<R>>,
    nf4: Vec<Quant4Weight<R>>,
    nf4_dq: Vec<Quant4Weight<R>>,
    int8: Vec<Int8Matrix<R>>,
}

impl Weights {
    fn new(ctx: &Ctx, n: usize, k: usize) -> Self {
        let mut w = Weights {
            dense: vec![],
            dense_nk: vec![],
            nf4: vec![],
            nf4_dq: vec![],
            int8: vec![],
        };
        for _ in 0..COPIES {
            let bf16 =
                random_normal::<R>(Shape::from(vec![n, k]), &ctx.device, 0.0, 0.02, DType::BF16);
            w.nf4
                .push(quantize_4bit(&bf16, Quant4Options::default()).unwrap());
            w.nf4_dq.push(
                quantize_4bit(
                    &bf16,
                    Quant4Options {
                        double_quant: true,
                        ..Default::default()
                    },
                )
                .unwrap(),
            );
            w.dense_nk.push(bf16.clone());
            let f16 = burn_cubecl::kernel::cast(bf16, DType::F16);
            w.int8
                .push(int8_quantize_rows(&f16, 0.0).unwrap().quantized);
            // burn's Linear keeps its weight as [in, out].
            w.dense.push(random_normal::<R>(
                Shape::from(vec![k, n]),
                &ctx.device,
                0.0,
                0.02,
                DType::BF16,
            ));
        }
        ctx.sync();
        w
    }
}

#[allow(clippy::too_many_arguments)]
fn cases<'a>(
    ctx: &'a Ctx,
    w: &'a Weights,
    x_bf16: &'a CubeTensor<R>,
    x_f16: &'a CubeTensor<R>,
    m: usize,
    n: usize,
    k: usize,
    sweep: bool,
) -> Vec<Case<'a>> {
    let q4_bytes = n * k / 2 + n * k / 64 * 4;
    let q4_dq_bytes = n * k / 2 + n * k / 64 + n * k / 64 / 256 * 4;
    let i8_bytes = n * k + n * 4;
    let mut cases: Vec<Case<'a>> = vec![Case {
        format: "bf16 (burn)",
        variant: "burn matmul".into(),
        weight_bytes: n * k * 2,
        run: Box::new(move |i| {
            matmul::<R>(
                x_bf16.clone(),
                w.dense[i % COPIES].clone(),
                None,
                MatmulStrategy::default(),
                DType::BF16,
            )
            .unwrap();
        }),
    }];
    cases.push(Case {
        format: "bf16 (ours)",
        variant: format!(
            "{:?}",
            burn_bnb_kernels::matmul4::auto_strategy(&ctx.client, DType::BF16, m, n, k)
        ),
        weight_bytes: n * k * 2,
        run: Box::new(move |i| {
            matmul_dense(x_bf16, &w.dense_nk[i % COPIES], None).unwrap();
        }),
    });
    if sweep && (2..=32).contains(&m) {
        // The dense tensor-core kernel's tile shapes and split-K around the automatic choice.
        for (bm, bn, splits) in [
            (16, 64, 1),
            (16, 64, 2),
            (32, 64, 1),
            (32, 128, 1),
            (32, 64, 2),
            (64, 64, 1),
        ] {
            let strategy = Matmul4Strategy::Cmma(CmmaParams { bm, bn, splits });
            cases.push(Case {
                format: "bf16 (ours)",
                variant: format!("{strategy:?}"),
                weight_bytes: n * k * 2,
                run: Box::new(move |i| {
                    matmul_dense_with(x_bf16, &w.dense_nk[i % COPIES], None, strategy).unwrap();
                }),
            });
        }
    }
    if m > PREFILL_MIN_ROWS {
        // Prefill shapes: the quantized formats run as dequantization + this dense product.
        if hopper_gemm_supported(&ctx.client) {
            cases.push(Case {
                format: "bf16 (hopper)",
                variant: "wgmma + TMA".into(),
                weight_bytes: n * k * 2,
                run: Box::new(move |i| {
                    matmul_hopper(x_bf16, &w.dense_nk[i % COPIES], None).unwrap();
                }),
            });
        }
        // LLM.int8() without outliers: the row quantization and the product, on the strategy
        // the backend picks and on the shared-memory tensor-core kernel it used before.
        for strategy in [
            Int8Strategy::Auto,
            Int8Strategy::Cmma {
                bm: 64,
                bn: 128,
                splits: 1,
            },
        ] {
            let resolved = match strategy {
                Int8Strategy::Auto => {
                    burn_bnb_kernels::int8::auto_int8_strategy(&ctx.client, m, n, k)
                }
                s => s,
            };
            cases.push(Case {
                format: "int8",
                variant: format!("{resolved:?}"),
                weight_bytes: i8_bytes,
                run: Box::new(move |i| {
                    let q = int8_quantize_rows(x_f16, 0.0).unwrap().quantized;
                    int8_matmul_dequant_with(&q, &w.int8[i % COPIES], None, DType::F16, strategy)
                        .unwrap();
                }),
            });
        }
        return cases;
    }
    let mut q4 = |format: &'static str, dq: bool, strategy: Matmul4Strategy| {
        let weights = if dq { &w.nf4_dq } else { &w.nf4 };
        let resolved = match strategy {
            Matmul4Strategy::Auto => burn_bnb_kernels::matmul4::auto_strategy_4bit(
                &ctx.client,
                DType::BF16,
                m,
                n,
                k,
                64,
                dq,
            ),
            s => s,
        };
        let auto = if strategy == Matmul4Strategy::Auto {
            "auto "
        } else {
            ""
        };
        cases.push(Case {
            format,
            variant: format!("{auto}{resolved:?}"),
            weight_bytes: if dq { q4_dq_bytes } else { q4_bytes },
            run: Box::new(move |i| {
                matmul_4bit_with(x_bf16, &weights[i % COPIES], None, strategy).unwrap();
            }),
        });
    };
    q4("nf4", false, Matmul4Strategy::Auto);
    q4("nf4-dq", true, Matmul4Strategy::Auto);
    if sweep {
        if m == 1 {
            for (rows, cube_size) in [
                (4, 32),
                (8, 32),
                (2, 64),
                (2, 128),
                (4, 64),
                (4, 128),
                (4, 256),
                (8, 64),
                (8, 128),
            ] {
                q4(
                    "nf4",
                    false,
                    Matmul4Strategy::Simt(SimtParams {
                        rows,
                        mt: 1,
                        cube_size,
                    }),
                );
            }
        } else {
            let bm = if m <= 16 { 16 } else { 32 };
            for (bn, splits) in [(64, 2), (64, 4), (64, 8), (64, 16), (128, 4), (128, 8)] {
                if bn == 128 && bm == 16 {
                    continue;
                }
                q4(
                    "nf4",
                    false,
                    Matmul4Strategy::Cmma(CmmaParams { bm, bn, splits }),
                );
            }
            q4(
                "nf4",
                false,
                Matmul4Strategy::Simt(SimtParams {
                    rows: 2,
                    mt: 8,
                    cube_size: 128,
                }),
            );
        }
        // At one row the automatic choice is the SIMT GEMV; the register-fragment kernel's
        // parameters are those it picks for two rows (one 8-row tile, wide steps), so that the
        // sweep tells whether its pair table and tensor cores beat the GEMV's 16-entry table.
        if let Matmul4Strategy::Mma(auto) = burn_bnb_kernels::matmul4::auto_strategy_4bit(
            &ctx.client,
            DType::BF16,
            m.max(2),
            n,
            k,
            64,
            false,
        ) {
            // Every variant with double-quantized scales too: the best parameters of the two
            // instances differ (fourteenth session: NF4's four weight tiles did not carry over).
            let mut variants = match split_list() {
                // Split-K counts of any size (the automatic rule takes powers of two), at two
                // and four weight tiles a warp: whether the grid's waves cost the product.
                Some(splits) => splits
                    .into_iter()
                    .flat_map(|splits| {
                        [2, 4].map(|mt| MmaParams {
                            mt,
                            splits,
                            depth: 1,
                            ..auto
                        })
                    })
                    .collect(),
                None => mma_sweep(auto, true),
            };
            if m == 1 {
                // One launch, no partial sums (what a fused epilogue needs at one row): the
                // device filled by small cubes instead of split-K.
                variants.extend(
                    [(1, 1), (2, 1), (1, 2), (1, 4)].map(|(mt, warps)| MmaParams {
                        mt,
                        warps,
                        splits: 1,
                        depth: 2,
                        ..auto
                    }),
                );
            }
            for p in variants {
                q4("nf4", false, Matmul4Strategy::Mma(p));
                q4("nf4-dq", true, Matmul4Strategy::Mma(p));
            }
        }
    }
    let mut i8 = |format: &'static str, threshold: f32, strategy: Option<Int8Strategy>| {
        let variant = match strategy {
            None => format!("linear_8bit_lt threshold {threshold}"),
            Some(s) => format!("{s:?}"),
        };
        cases.push(Case {
            format,
            variant,
            weight_bytes: i8_bytes,
            run: Box::new(move |i| match strategy {
                None => {
                    linear_8bit_lt(x_f16, &w.int8[i % COPIES], None, threshold).unwrap();
                }
                Some(s) => {
                    let q = int8_quantize_rows(x_f16, 0.0).unwrap().quantized;
                    int8_matmul_dequant_with(&q, &w.int8[i % COPIES], None, DType::F16, s).unwrap();
                }
            }),
        });
    };
    i8("int8", 0.0, None);
    i8("int8-decomp", 6.0, None);
    if sweep {
        if m == 1 {
            for (rows, cube_size) in [(2, 128), (4, 64), (4, 256), (8, 128)] {
                i8(
                    "int8",
                    0.0,
                    Some(Int8Strategy::Simt {
                        rows,
                        mt: 1,
                        cube_size,
                    }),
                );
            }
        } else {
            let bm = if m <= 16 { 16 } else { 32 };
            for (bn, splits) in [(64, 4), (64, 8), (64, 16), (128, 8)] {
                if bn == 128 && bm == 16 {
                    continue;
                }
                i8("int8", 0.0, Some(Int8Strategy::Cmma { bm, bn, splits }));
            }
            if let Int8Strategy::Mma(auto) =
                burn_bnb_kernels::int8::auto_int8_strategy(&ctx.client, m, n, k)
            {
                for p in mma_sweep(auto, false) {
                    i8("int8", 0.0, Some(Int8Strategy::Mma(p)));
                }
            }
        }
    }
    cases
}

/// `BNB_MMA_SPLITS`: split-K counts that replace the register-fragment kernel's sweep.
fn split_list() -> Option<Vec<u32>> {
    let splits = env_list("BNB_MMA_SPLITS", "split-K counts", &[], |s| {
        s.parse().ok().filter(|&s: &u32| s >= 1)
    });
    (!splits.is_empty()).then_some(splits)
}

/// Register-fragment kernel variants around the automatic choice `auto`: split-K doubled and
/// halved, load rings of 1 and 3 steps, 1, 2 or 8 warps a cube, one or four 16-row tiles a warp; for the 4-bit
/// kernel (`toggle_wide`) also the other step width.
fn mma_sweep(auto: MmaParams, toggle_wide: bool) -> Vec<MmaParams> {
    let mut variants: Vec<MmaParams> = [
        (2, 4, 2.0, 2),
        (2, 4, 0.5, 2),
        (2, 4, 1.0, 1),
        (2, 4, 1.0, 3),
        (2, 8, 1.0, 2),
        (1, 4, 1.0, 2),
        (1, 8, 2.0, 4),
        (4, 4, 1.0, 1),
        (4, 4, 1.0, 2),
        (4, 2, 1.0, 2),
        (4, 4, 2.0, 1),
        // More cubes without more partial sums, for the small layers (4096x4096 and 6144x4096
        // fill the H200 with one 4-warp cube a multiprocessor at 32 rows).
        (4, 2, 2.0, 1),
        (4, 1, 1.0, 1),
        (4, 1, 2.0, 1),
        (2, 2, 1.0, 2),
        (2, 2, 2.0, 2),
        (2, 1, 1.0, 2),
        (1, 2, 1.0, 2),
        (4, 4, 4.0, 1),
    ]
    .into_iter()
    .map(|(mt, warps, split_scale, depth)| MmaParams {
        mt,
        warps,
        splits: ((auto.splits as f64 * split_scale) as u32).max(1),
        depth,
        ..auto
    })
    .collect();
    if toggle_wide {
        let other = |p: MmaParams| MmaParams { wide: !p.wide, ..p };
        variants.extend([other(auto), other(variants[1]), other(variants[2])]);
    }
    variants
}

/// The comma-separated values of the environment variable `name` (each read by `parse`), or
/// `default` when it is unset.
///
/// # Panics
/// If a value does not parse: the bench is run by hand, and a typo should stop it.
fn env_list<T: Clone>(
    name: &str,
    what: &str,
    default: &[T],
    parse: impl Fn(&str) -> Option<T>,
) -> Vec<T> {
    match std::env::var(name) {
        Ok(list) => list
            .split(',')
            .map(|v| {
                parse(v.trim()).unwrap_or_else(|| {
                    panic!("{name}: a comma-separated list of {what}, not {v:?}")
                })
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}

fn measure(ctx: &Ctx, case: &Case, n: usize, k: usize, m: usize, copy_gbps: f64) -> Row {
    // Warm-up: compilation, autotuning, allocator.
    for i in 0..3 {
        (case.run)(i);
    }
    ctx.sync();
    let calls = 40;
    let mut per_call = Vec::new();
    let mut host = Vec::new();
    for _ in 0..7 {
        ctx.sync();
        let start = Instant::now();
        for i in 0..calls {
            (case.run)(i);
        }
        host.push(start.elapsed().as_secs_f64() / calls as f64);
        ctx.sync();
        per_call.push(start.elapsed().as_secs_f64() / calls as f64);
    }
    per_call.sort_by(f64::total_cmp);
    host.sort_by(f64::total_cmp);
    let t = per_call[per_call.len() / 2];
    let gbps = case.weight_bytes as f64 / t / 1e9;
    Row {
        n,
        k,
        m,
        format: case.format,
        variant: case.variant.clone(),
        us: t * 1e6,
        host_us: host[host.len() / 2] * 1e6,
        gbps,
        copy_fraction: gbps / copy_gbps,
    }
}

fn write_results(dir: &std::path::Path, rows: &[Row], copy_gbps: f64) {
    std::fs::create_dir_all(dir).expect("output directory");
    let json_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "N": r.n, "K": r.k, "M": r.m, "format": r.format, "variant": r.variant,
                "us": r.us, "host_us": r.host_us, "weight_gbps": r.gbps, "copy_fraction": r.copy_fraction,
            })
        })
        .collect();
    let json = serde_json::json!({
        "device": device_name(),
        "copy_gbps": copy_gbps,
        "git_commit": option_env!("BNB_GIT_COMMIT").unwrap_or("unknown"),
        "rows": json_rows,
    });
    std::fs::write(
        dir.join("kernels.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    let mut md = format!(
        "| N x K | M | format | variant | us | host us | weight GB/s | % of copy ({copy_gbps:.0} GB/s) |\n|---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        md += &format!(
            "| {}x{} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {:.0}% |\n",
            r.n,
            r.k,
            r.m,
            r.format,
            r.variant,
            r.us,
            r.host_us,
            r.gbps,
            r.copy_fraction * 100.0
        );
    }
    std::fs::write(dir.join("kernels.md"), md).unwrap();
}

fn device_name() -> String {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,driver_version", "--format=csv,noheader"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
