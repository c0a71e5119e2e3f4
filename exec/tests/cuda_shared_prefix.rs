//! The decode attention over shared prefixes (issue 24's W5; docs/cuda.md, "Decode attention"):
//! one layer at Qwen3-0.6B shapes (16 q / 8 kv heads, head_dim 128), decode rows whose first
//! 2,048 positions are one of 64 cached prefixes (the same KV slots for every row of a prefix)
//! followed by 128-384 slots of their own (question and generated tokens, as mid-W5), run as
//! the step plan runs it at that row count (kernel, splits, combine, q/k pass, o prefetch). The
//! rows in three orders: grouped (a prefix's rows adjacent), interleaved in a seeded random order
//! (as the W5 trace's), and interleaved then sorted by `VisitOrder` (the backend's order). Also
//! 256 rows (64 prefixes x 4) and an unshared control (every row its own prefix). Prints ms per
//! call, the KV bytes of every row's positions and the unique ones (each prefix once), and the
//! effective TB/s of both; each with the plan's KV prefetch (bounded by the L2), with every
//! key's rows prefetched (the bound's predecessor: at 1,024 rows the resident blocks asked for
//! far more than the L2 holds) and with none. Checks that the sorted order and the prefetch leave
//! every output bit as it was; then the tensor-core kernels on the sorted order. A second test
//! runs the unshared 64- and 256-row batches at Llama-3.1-8B's heads (32 q / 8 kv, GQA group 4,
//! the same KV layout): which kernel family streams them fastest where served 256-row steps are
//! 1.19 x SGLang's (docs/peers.md, "Llama-3.1-8B"). GPU timing: ignored by default, run with
//! `--ignored` on the GPU machine (`JOBS=w5 scripts/gpu/verify.sh`); skips without a GPU.

mod cuda_common;

use cuda_common::{open_gpu, Report, Rng};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaSlice;
use doppel_exec::cuda::attention::{
    decode_splits, AttnEntry, AttnShape, DecodeMeta, DecodeOut, DecodeVariant, KvView, VisitOrder,
};
use doppel_exec::cuda::model::{KernelChoice, TokenPick};
use doppel_exec::cuda::ops::{QkvPost, RowScale};
use doppel_exec::cuda::plan::{DecodeAttn, DeviceCaps, QkPass, QkvStage, StepPlan, StepShape};
use doppel_exec::cuda::rope::cos_sin_table;
use doppel_exec::cuda::Gpu;
use doppel_exec::model::ModelConfig;
use half::bf16;
use std::path::Path;

const PREFIX: usize = 2048;
/// Each row's own slots: the 128-token question, then 0-256 generated tokens.
const QUESTION: usize = 128;
const MAX_GEN: usize = 256;
const STRIDE: usize = PREFIX + QUESTION + MAX_GEN;
const MAX_ROWS: usize = 1024;

fn shipped_config(text: &str) -> ModelConfig {
    ModelConfig::parse(text, Path::new("config.json")).expect("the shipped config parses")
}

fn qwen3_06b() -> ModelConfig {
    shipped_config(include_str!("../../scripts/gpu/qwen3-0.6b/config.json"))
}

fn llama31_8b() -> ModelConfig {
    shipped_config(include_str!("../../scripts/gpu/llama3.1-8b/config.json"))
}

/// A batch's slot table: row r + 1 serves decode row r (row 0 is the padding row).
struct Layout {
    table: Vec<u32>,
    kv_len: Vec<usize>,
    /// Each row's prefix (group).
    group: Vec<usize>,
    /// Distinct slots the rows read.
    unique: usize,
}

/// `rows` rows over `groups` prefixes (`groups` = `rows`: nothing shared): row r belongs to
/// prefix r / (rows / groups). Prefix g owns slots contiguous from
/// 1 + g * PREFIX (a prefill's), each row's question the next 128 contiguous slots, and its
/// generated tokens slots interleaved with the other rows' (one decode step allocates one slot
/// per row).
fn layout(rows: usize, groups: usize, rng: &mut Rng) -> Layout {
    let per = rows / groups;
    let mut table = vec![0u32; (rows + 1) * STRIDE];
    let (mut kv_len, mut group) = (Vec::new(), Vec::new());
    let own_base = 1 + groups * PREFIX;
    let gen_base = own_base + rows * QUESTION;
    let mut unique = groups * PREFIX;
    for r in 0..rows {
        let g = r / per;
        let gen = rng.below(MAX_GEN + 1);
        let len = PREFIX + QUESTION + gen;
        let t = &mut table[(r + 1) * STRIDE..(r + 2) * STRIDE];
        for (p, slot) in t.iter_mut().enumerate().take(len) {
            *slot = if p < PREFIX {
                1 + g * PREFIX + p
            } else if p < PREFIX + QUESTION {
                own_base + r * QUESTION + (p - PREFIX)
            } else {
                gen_base + (p - PREFIX - QUESTION) * rows + r
            } as u32;
        }
        unique += QUESTION + gen;
        kv_len.push(len);
        group.push(g);
    }
    Layout {
        table,
        kv_len,
        group,
        unique,
    }
}

/// Slots a layout of `rows` rows over `groups` prefixes may use.
fn slots_needed(rows: usize, groups: usize) -> usize {
    1 + groups * PREFIX + rows * (QUESTION + MAX_GEN)
}

/// Decode entries visiting table rows `order` (row r of the layout is table row r + 1), token i
/// for the i-th.
fn entries(l: &Layout, order: &[usize]) -> Vec<AttnEntry> {
    order
        .iter()
        .enumerate()
        .map(|(i, &r)| AttnEntry {
            q_start: i,
            q_len: 1,
            kv_len: l.kv_len[r],
            row: r + 1,
        })
        .collect()
}

/// The backend's order of `e`: sorted by each table row's position-0 slot.
fn sorted(l: &Layout, e: &[AttnEntry]) -> Vec<AttnEntry> {
    let mut order = VisitOrder::new(l.kv_len.len() + 1);
    for row in 0..=l.kv_len.len() {
        order.note(row, 0, l.table[row * STRIDE]);
    }
    let mut e = e.to_vec();
    order.sort(&mut e);
    e
}

/// A seeded random permutation of 0..n (Fisher-Yates, as the W5 trace interleaves its groups).
fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

/// The device side: one layer's caches (random values, sized for the largest layout) and the
/// step inputs of up to MAX_ROWS decode rows.
struct Bench {
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
    table: CudaSlice<u32>,
    qkv: CudaSlice<bf16>,
    xres: CudaSlice<bf16>,
    norm_w: CudaSlice<bf16>,
    cos_sin: CudaSlice<f32>,
    o_weights: CudaSlice<bf16>,
    num_slots: usize,
    cfg: ModelConfig,
}

impl Bench {
    fn new(gpu: &Gpu, rng: &mut Rng, num_slots: usize, cfg: ModelConfig) -> Bench {
        let w = cfg.kv_dim();
        // Random 16 MiB repeated over the pool: its values only have to be finite.
        let block = gpu.upload(&rng.bf16s(8 << 20, 1.0)).unwrap();
        let fill = || {
            let mut buf = gpu.zeros::<bf16>(num_slots * w).unwrap();
            let n = buf.len();
            let mut done = 0;
            while done < n {
                let len = (n - done).min(block.len());
                let mut dst = buf.slice_mut(done..done + len);
                gpu.stream
                    .memcpy_dtod(&block.slice(0..len), &mut dst)
                    .unwrap();
                done += len;
            }
            buf
        };
        let (k, v) = (fill(), fill());
        let qkv_w = cfg.q_dim() + 2 * w;
        Bench {
            k,
            v,
            table: gpu.zeros::<u32>((MAX_ROWS + 1) * STRIDE).unwrap(),
            qkv: gpu.upload(&rng.bf16s(MAX_ROWS * qkv_w, 2.0)).unwrap(),
            xres: gpu
                .upload(&rng.bf16s(MAX_ROWS * cfg.hidden_size, 6.0))
                .unwrap(),
            norm_w: gpu.upload(&rng.bf16s(cfg.head_dim, 1.5)).unwrap(),
            cos_sin: gpu
                .upload(&cos_sin_table(&cfg.rope_inv_freq(), STRIDE))
                .unwrap(),
            o_weights: gpu.zeros::<bf16>(cfg.hidden_size * cfg.q_dim()).unwrap(),
            num_slots,
            cfg,
        }
    }
}

/// One order's device inputs, launched as the step plan would at its row count.
struct Step {
    meta: DecodeMeta,
    positions: CudaSlice<i32>,
    slots: CudaSlice<u32>,
    part_o: CudaSlice<f32>,
    part_ml: CudaSlice<f32>,
    counters: CudaSlice<u32>,
    out: CudaSlice<bf16>,
    plan: StepPlan,
    splits: usize,
    min_keys: usize,
    /// Keys each block prefetches (the plan's unless a row of the table sets it).
    pf_keys: usize,
}

impl Step {
    fn new(gpu: &Gpu, b: &Bench, l: &Layout, e: &[AttnEntry], k: &KernelChoice) -> Step {
        let (c, n) = (&b.cfg, e.len());
        // Token i's position and new slot (its row's last position).
        let (mut positions, mut slots) = (vec![0i32; n], vec![0u32; n]);
        for x in e {
            positions[x.q_start] = (x.kv_len - 1) as i32;
            slots[x.q_start] = l.table[x.row * STRIDE + x.kv_len - 1];
        }
        // As the backend sizes them (backend/mod.rs, CudaBackend::new and step.rs).
        let max_splits = decode_splits(1, c.num_kv_heads, STRIDE, gpu.sms).max(1);
        let splits = decode_splits(n, c.num_kv_heads, STRIDE, gpu.sms).min(max_splits);
        let shape = StepShape {
            tokens: n,
            extend: None,
            decode: Some((n, splits)),
            logit_rows: n,
            pick: TokenPick::Argmax,
        };
        let plan = StepPlan::new(c, k, DeviceCaps::of(gpu), shape);
        let nan = vec![bf16::from_f32(f32::NAN); n * c.q_dim()];
        Step {
            meta: DecodeMeta::new(gpu, e, n, MAX_ROWS + 1, STRIDE).unwrap(),
            positions: gpu.upload(&positions).unwrap(),
            slots: gpu.upload(&slots).unwrap(),
            part_o: gpu.zeros(n * c.q_dim() * splits).unwrap(),
            part_ml: gpu.zeros(n * c.num_heads * splits * 2).unwrap(),
            counters: gpu.zeros(n * c.num_kv_heads).unwrap(),
            out: gpu.upload(&nan).unwrap(),
            pf_keys: plan.decode.map_or(0, |d| d.prefetch_kv_keys),
            plan,
            splits,
            min_keys: k.decode_split_min_keys,
        }
    }

    fn decode(&self) -> DecodeAttn {
        self.plan
            .decode
            .expect("a decode step plans a decode attention")
    }

    /// The decode attention as layer.rs launches it for this plan.
    fn launch(&self, gpu: &Gpu, b: &Bench) {
        let (c, d) = (&b.cfg, self.decode());
        let shape = AttnShape {
            nq: c.num_heads,
            nk: c.num_kv_heads,
            head_dim: c.head_dim,
            q_stride: c.q_dim() + 2 * c.kv_dim(),
            table_stride: STRIDE,
            table_rows: MAX_ROWS + 1,
            num_slots: b.num_slots,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            split_min_keys: self.min_keys,
            decode_early_kv: d.early_kv,
            decode_prefetch_kv_keys: self.pf_keys,
            decode_prefetch_next: d.prefetch_o.then(|| gpu.ptr(&b.o_weights)),
            decode_kernel: d.kernel,
        };
        let variant = if d.combine_fused {
            DecodeVariant::Fused(gpu.ptr(&self.counters))
        } else {
            DecodeVariant::Combine
        };
        let post = QkvPost {
            qk_norm: c.qk_norm.then(|| (gpu.ptr(&b.norm_w), gpu.ptr(&b.norm_w))),
            positions: gpu.ptr(&self.positions),
            cos_sin: gpu.ptr(&b.cos_sin),
            k_cache: gpu.ptr(&b.k),
            v_cache: gpu.ptr(&b.v),
            slots: gpu.ptr(&self.slots),
            row_scale: matches!(self.plan.qkv, QkvStage::RawResidual(_)).then(|| RowScale {
                x: gpu.ptr(&b.xres),
                hidden: c.hidden_size,
                eps: c.rms_norm_eps as f32,
            }),
        };
        // Without the pass in the attention (not a pure decode step at this size) the raw
        // projection stands in for the processed q: the same reads, other values.
        let qk =
            (self.plan.qk == QkPass::InDecodeAttention).then_some((&post, c.rms_norm_eps as f32));
        let kv = KvView {
            k_cache: gpu.ptr(&b.k),
            v_cache: gpu.ptr(&b.v),
            table: gpu.ptr(&b.table),
        };
        let dst = DecodeOut {
            out: gpu.ptr(&self.out),
            part_o: gpu.ptr(&self.part_o),
            part_ml: gpu.ptr(&self.part_ml),
            splits: self.splits,
            variant,
        };
        gpu.attention_decode(gpu.ptr(&b.qkv), kv, &self.meta, &shape, dst, qk)
            .unwrap();
    }

    /// What runs, in words.
    fn describe(&self) -> String {
        let d = self.decode();
        format!(
            "{:?}, {} split(s), combine {}, q/k pass {:?}, o prefetch {}, KV prefetch {} keys",
            d.kernel,
            self.splits,
            if d.combine_fused { "fused" } else { "kernel" },
            self.plan.qk,
            d.prefetch_o,
            self.pf_keys.min(99_999)
        )
    }
}

/// Median milliseconds of one call of `f`: `samples` timings of `inner` calls between two
/// events, after 2 warm-up calls.
fn time_ms(gpu: &Gpu, samples: usize, inner: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
    }
    gpu.sync().unwrap();
    let ev = || {
        gpu.stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap()
    };
    let mut v: Vec<f64> = (0..samples)
        .map(|_| {
            let a = ev();
            for _ in 0..inner {
                f();
            }
            let b = ev();
            b.synchronize().unwrap();
            a.elapsed_ms(&b).unwrap() as f64 / inner as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Entries whose row shares its prefix with the row visited just before.
fn neighbours(l: &Layout, e: &[AttnEntry]) -> usize {
    e.windows(2)
        .filter(|w| l.group[w[0].row - 1] == l.group[w[1].row - 1])
        .count()
}

fn bits(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A batch's KV bytes: every row's positions, and each slot once.
struct Bytes {
    all: usize,
    unique: usize,
}

/// One table row: the batch, the order, the KV prefetch, ms, bytes, rates, same-prefix
/// neighbours, the plan.
fn print_row(what: &str, order: &str, pf: &str, ms: f64, by: &Bytes, adj: usize, plan: String) {
    println!(
        "{:<28} {:<26} {:>5} {:>8.3} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>5}  {}",
        what,
        order,
        pf,
        ms,
        by.all as f64 / 1e9,
        by.unique as f64 / 1e9,
        by.all as f64 / ms / 1e9,
        by.unique as f64 / ms / 1e9,
        adj,
        plan
    );
}

/// One batch (`rows` rows over `groups` prefixes) in each order, with the plan's whole-row KV
/// prefetch and without; the sorted order's outputs against the interleaved one's, and the
/// prefetch's (a hint: the same bits).
fn scenario(gpu: &Gpu, b: &mut Bench, rng: &mut Rng, rep: &mut Report, rows: usize, groups: usize) {
    let l = layout(rows, groups, rng);
    gpu.stream
        .memcpy_htod(&l.table, &mut b.table.slice_mut(0..l.table.len()))
        .unwrap();
    let inter = entries(&l, &shuffled(rows, rng));
    let fixed = sorted(&l, &inter);
    let mut orders = Vec::new();
    if groups < rows {
        let grouped: Vec<usize> = (0..rows).collect();
        orders.push(("grouped", entries(&l, &grouped)));
    }
    orders.push(("interleaved (W5)", inter));
    orders.push(("interleaved + VisitOrder", fixed));
    // K and V of every kv head, bf16.
    let pos_bytes = 2 * b.cfg.kv_dim() * 2;
    let by = Bytes {
        all: l.kv_len.iter().sum::<usize>() * pos_bytes,
        unique: l.unique * pos_bytes,
    };
    let what = if groups < rows {
        format!("{rows} rows, {groups} prefixes x {}", rows / groups)
    } else {
        format!("{rows} rows, unshared")
    };
    // The plan's prefetch (bounded by the L2), every key's rows (before the bound), none.
    let prefetch = [
        ("plan", None),
        ("whole", Some(usize::MAX)),
        ("off", Some(0)),
    ];
    let mut outs = Vec::new();
    for (order, e) in &orders {
        for (pf, keys) in &prefetch {
            let mut step = Step::new(gpu, b, &l, e, &KernelChoice::default());
            if let Some(n) = keys {
                step.pf_keys = *n;
            }
            let ms = time_ms(gpu, 7, 3, || step.launch(gpu, b));
            print_row(
                &what,
                order,
                pf,
                ms,
                &by,
                neighbours(&l, e),
                step.describe(),
            );
            outs.push(gpu.download(&step.out).unwrap());
        }
    }
    // The interleaved order's plan, whole, off, then the sorted order's: the last six.
    let last: Vec<Vec<bf16>> = outs.iter().rev().take(6).rev().cloned().collect();
    let sorted_order = &orders[orders.len() - 1].1;
    kernels(gpu, b, &l, sorted_order, &what, &by, &last[3], rep);
    rep.check(
        &format!("{what}: every output written"),
        0.0,
        outs.iter().flatten().all(|x| !x.to_f32().is_nan()),
    );
    rep.exact(
        &format!("{what}: VisitOrder's outputs = the interleaved order's"),
        &bits(&last[3]),
        &bits(&last[0]),
    );
    rep.exact(
        &format!("{what}: outputs with the whole-row KV prefetch = the plan's"),
        &bits(&last[1]),
        &bits(&last[0]),
    );
    rep.exact(
        &format!("{what}: outputs without the KV prefetch = the plan's"),
        &bits(&last[2]),
        &bits(&last[0]),
    );
}

/// The same batch and order through each decode kernel family (the plan picks a CUDA-core
/// kernel above `decode_reg_mma_max_tokens` rows, one of the last two): which one streams long
/// shared and unshared contexts fastest at 64-1,024 rows, the shapes where W3 at 256 streams,
/// W4 and W5 lose time. Their outputs must agree with the plan's within bf16 rounding.
#[allow(clippy::too_many_arguments)]
fn kernels(
    gpu: &Gpu,
    b: &Bench,
    l: &Layout,
    e: &[AttnEntry],
    what: &str,
    by: &Bytes,
    plan_out: &[bf16],
    rep: &mut Report,
) {
    let all = usize::MAX;
    let choices = [
        (
            "tensor cores, cp.async ring",
            KernelChoice {
                decode_mma_max_tokens: all,
                decode_reg_mma_max_tokens: all,
                ..KernelChoice::default()
            },
        ),
        (
            "tensor cores, registers",
            KernelChoice {
                decode_mma_max_tokens: 0,
                decode_reg_mma_max_tokens: all,
                ..KernelChoice::default()
            },
        ),
        // Above 32 rows (every batch here) the plan runs CUDA cores: pipelined up to group 4,
        // or waiting for each iteration's keys.
        (
            "CUDA cores, pipelined",
            KernelChoice {
                decode_pipelined_max_group: 4,
                ..KernelChoice::default()
            },
        ),
        (
            "CUDA cores, waiting",
            KernelChoice {
                decode_pipelined_max_group: 0,
                ..KernelChoice::default()
            },
        ),
    ];
    for (name, k) in &choices {
        let step = Step::new(gpu, b, l, e, k);
        let ms = time_ms(gpu, 7, 3, || step.launch(gpu, b));
        let order = format!("VisitOrder, {name}");
        print_row(
            what,
            &order,
            "plan",
            ms,
            by,
            neighbours(l, e),
            step.describe(),
        );
        let out = gpu.download(&step.out).unwrap();
        // Largest difference relative to the largest output: bf16 outputs of f32 sums taken in
        // another order differ by an ulp or two.
        let scale = plan_out
            .iter()
            .map(|x| x.to_f32().abs())
            .fold(0.0f32, f32::max);
        let worst = out
            .iter()
            .zip(plan_out)
            .map(|(a, b)| (a.to_f32() - b.to_f32()).abs())
            .fold(0.0f32, f32::max)
            / scale.max(f32::MIN_POSITIVE);
        let name = format!("{what}: {name} = the plan's kernel (rel. to largest)");
        rep.check(&name, worst as f64, worst < 2e-2);
    }
}

/// The table's header for a model's shapes.
fn header(gpu: &Gpu, model: &str) {
    println!(
        "\none layer's decode attention, {model} shapes, {} SMs; prefixes of {PREFIX} slots, \
         {QUESTION}-{} own per row; GB: KV read by every row's positions / each slot once",
        gpu.sms,
        QUESTION + MAX_GEN
    );
    println!(
        "{:<28} {:<26} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>5}  plan",
        "batch", "row order", "KV pf", "ms", "GB all", "GB uniq", "TB/s all", "TB/s uq", "adj"
    );
}

#[test]
#[ignore = "GPU timing; run explicitly on the GPU machine"]
fn shared_prefix_decode_attention_by_row_order() {
    let Some(gpu) = open_gpu() else { return };
    let mut rng = Rng::new(0x5eed_0024);
    // Sized for the largest batch: 1,024 rows, nothing shared.
    let slots = slots_needed(MAX_ROWS, MAX_ROWS);
    let mut b = Bench::new(&gpu, &mut rng, slots, qwen3_06b());
    let mut rep = Report::default();
    header(&gpu, "Qwen3-0.6B");
    for (rows, groups) in [(1024, 64), (256, 64), (1024, 1024), (256, 256)] {
        scenario(&gpu, &mut b, &mut rng, &mut rep, rows, groups);
    }
    rep.finish();
}

#[test]
#[ignore = "GPU timing; run explicitly on the GPU machine"]
fn gqa_group_4_decode_attention_by_kernel() {
    let Some(gpu) = open_gpu() else { return };
    let mut rng = Rng::new(0x5eed_0824);
    let slots = slots_needed(256, 256);
    let mut b = Bench::new(&gpu, &mut rng, slots, llama31_8b());
    let mut rep = Report::default();
    header(&gpu, "Llama-3.1-8B");
    for rows in [64, 256] {
        scenario(&gpu, &mut b, &mut rng, &mut rep, rows, rows);
    }
    rep.finish();
}
