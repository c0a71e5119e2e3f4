//! The decode split, the shared-KV saving, the submit and launch fits on made-up steps.

use super::*;
use crate::cost::BatchShape;

fn point(shape: BatchShape, mode: &str, ns: u64, host: u64, dev: u64) -> StepPoint {
    let mut p = StepPoint::of(&shape, mode, ns);
    p.host_ns = host;
    p.device_ns = Some(dev);
    p
}

#[test]
fn decode_table_fits_the_raggedness_term_from_uneven_batches() {
    let mut steps = Vec::new();
    // 4 requests; even at 128/512/2048, and uneven: lengths 256..1792 (mean 1024).
    for kv in [128usize, 512, 2048] {
        let d = 1_000_000 + 50 * 4 * kv as u64;
        steps.push(point(BatchShape::decode(4, kv), "decode", d, 50_000, d));
    }
    let mut s = BatchShape::decode(4, 1024);
    s.max_kv = 1792;
    let excess = (4 * 1792 - 4 * 1024) as f64;
    let d = 1_000_000 + 50 * 4096 + (20.0 * excess) as u64;
    steps.push(point(s, "decode", d, 50_000, d));
    let t = fit_decode(&steps).table;
    assert_eq!(t.len(), 1, "{t:?}");
    assert!(
        (t[0].2 - 50.0).abs() < 1e-3 && (t[0].3 - 20.0).abs() < 1e-2,
        "{t:?}"
    );
}

#[test]
fn padded_batches_fit_the_padding_share_then_ragged_ones_the_raggedness_rate() {
    // Graph 16 at 48 ns per KV token; 9 or 12 even requests padded to 16 rows, each padding
    // row 0.4 of a request as long as the longest.
    let dev = |b: usize, kv: usize, max: usize| {
        1_200_000.0
            + 48.0 * (b * kv) as f64
            + 0.4 * 48.0 * ((16 - b) * max) as f64
            + 30.0 * (b * max - b * kv) as f64
    };
    let mut steps = Vec::new();
    for kv in [128usize, 512, 2048] {
        let d = dev(16, kv, kv) as u64;
        steps.push(point(BatchShape::decode(16, kv), "decode", d, 60_000, d));
    }
    // (A scenario's run of steps; a lone step of a batch size is a transient.)
    for (b, kv0) in [(9usize, 512usize), (12, 1024)] {
        for kv in kv0..kv0 + 4 {
            let d = dev(b, kv, kv) as u64;
            steps.push(point(BatchShape::decode(b, kv), "decode", d, 60_000, d));
        }
    }
    let even = steps.len();
    // Ragged padded batches only: 30 ns per token of raggedness.
    for kv in 1000..1004 {
        let mut s = BatchShape::decode(10, kv);
        s.max_kv = kv + 700;
        let d = dev(10, kv, kv + 700) as u64;
        steps.push(point(s, "decode", d, 60_000, d));
    }
    let f = fit_decode(&steps);
    assert_eq!(f.table.len(), 1, "{f:?}");
    assert!((f.padding_share - 0.4).abs() < 2e-3, "{f:?}");
    assert!((f.table[0].3 - 30.0).abs() < 0.5, "{f:?}");
    assert_eq!(fit_decode(&steps[..3]).padding_share, 0.0);
    assert_eq!(
        fit_decode(&steps[..4]).padding_share,
        0.0,
        "a lone step is a transient"
    );
    assert_eq!(fit_decode(&steps[..even]).table[0].3, 0.0);
    // A padded step measured at 0 ns (no measurement) is left out: the share stays finite.
    let mut zero = steps.clone();
    zero[3].device_ns = Some(0);
    let z = fit_decode(&zero);
    assert!(z.padding_share.is_finite(), "{z:?}");
    assert!((z.padding_share - 0.4).abs() < 2e-3, "{z:?}");
}

#[test]
fn a_row_keeps_its_measured_kv_points_and_prices_between_them() {
    // Convex in the KV read: the line through 128/512/2048 misses 512 by ~2 %; the points
    // price each measured length at its median and interpolate between them.
    let cost = |kv: usize| 1_000_000 + if kv < 1000 { 40 } else { 60 } * 16 * kv as u64;
    let mut steps = Vec::new();
    for kv in [128usize, 512, 2048] {
        for k in 0..8 {
            let d = cost(kv + k);
            steps.push(point(
                BatchShape::decode(16, kv + k),
                "decode",
                d,
                60_000,
                d,
            ));
        }
    }
    let f = fit_decode(&steps);
    let pts = points_of(&f.points, 16.0);
    assert_eq!(pts.len(), 3, "{f:?}");
    let at = |kv: f64| crate::cost::decode_row_ns((f.table[0].1, f.table[0].2), pts, kv);
    for kv in [128usize, 512, 2048] {
        let read = (16 * kv) as f64 + 16.0 * 3.5;
        let want = cost(kv + 3) as f64 + 16.0 * 0.5 * if kv < 1000 { 40.0 } else { 60.0 };
        assert!(
            (at(read) / want - 1.0).abs() < 1e-3,
            "{kv} {} {want}",
            at(read)
        );
    }
    let line = f.table[0].1 + f.table[0].2 * 16.0 * 515.5;
    assert!(line / cost(515) as f64 - 1.0 > 0.01, "{line}");
    // Without points a row is its line.
    assert_eq!(crate::cost::decode_row_ns((5.0, 2.0), &[], 10.0), 25.0);
}

#[test]
fn shared_prefix_decodes_fit_the_saving_and_stay_out_of_the_table() {
    let mut steps = Vec::new();
    for kv in [128usize, 512, 2048] {
        let d = 1_200_000 + 48 * 16 * kv as u64;
        steps.push(point(BatchShape::decode(16, kv), "decode", d, 60_000, d));
    }
    // 16 requests over a 1024-token prefix: 15 x 1024 tokens are read again, at 40 % of
    // the rate.
    for kv in [1100usize, 1200] {
        let mut s = BatchShape::decode(16, kv);
        s.shared_kv_tokens = 15 * 1024;
        let read = (16 * kv) as f64 - 0.6 * s.shared_kv_tokens as f64;
        let d = (1_200_000.0 + 48.0 * read) as u64;
        steps.push(point(s, "decode", d, 60_000, d));
    }
    let t = fit_decode(&steps).table;
    assert_eq!(t.len(), 1, "{t:?}");
    assert!((t[0].1 - 1_200_000.0).abs() < 2.0 && t[0].3 == 0.0, "{t:?}");
    let (saving, rows) = fit_shared_saving(&steps, &t, &[], 1.0);
    assert!((saving - 0.6).abs() < 2e-3, "{saving}");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0].0 == 16.0 && (rows[0].1 - 0.6).abs() < 2e-3,
        "{rows:?}"
    );
    assert_eq!(fit_shared_saving(&steps[..3], &t, &[], 1.0), (0.0, vec![]));
}

#[test]
fn each_row_fits_its_own_shared_saving() {
    // Graph 4 saves 10 % of a shared token's time, graph 64 50 %.
    let mut steps = Vec::new();
    let rows = [
        (4usize, 1_000_000.0, 50.0, 0.1),
        (64, 1_500_000.0, 48.0, 0.5),
    ];
    for &(b, fixed, slope, _) in &rows {
        for kv in [128usize, 512, 2048] {
            let d = (fixed + slope * (b * kv) as f64) as u64;
            steps.push(point(BatchShape::decode(b, kv), "decode", d, 60_000, d));
        }
    }
    for &(b, fixed, slope, saving) in &rows {
        for kv in [1100usize, 1200] {
            let mut s = BatchShape::decode(b, kv);
            s.shared_kv_tokens = (b - 1) * 1024;
            let read = (b * kv) as f64 - saving * s.shared_kv_tokens as f64;
            let d = (fixed + slope * read) as u64;
            steps.push(point(s, "decode", d, 60_000, d));
        }
    }
    let t = fit_decode(&steps).table;
    let (all, per_row) = fit_shared_saving(&steps, &t, &[], 0.0);
    assert_eq!(per_row.len(), 2, "{per_row:?}");
    assert!((per_row[0].1 - 0.1).abs() < 2e-3, "{per_row:?}");
    assert!((per_row[1].1 - 0.5).abs() < 2e-3, "{per_row:?}");
    // The one saving over both: between them, nearer the larger batch's (more tokens).
    assert!(all > 0.4 && all < 0.5, "{all}");
}

#[test]
fn decode_table_recovers_base_and_slope_per_batch() {
    let mut steps = Vec::new();
    for (b, base, slope) in [(1usize, 1_000_000.0, 60.0), (4, 1_400_000.0, 50.0)] {
        for kv in [128usize, 512, 2048] {
            let total = b * kv;
            let d = (base + slope * total as f64) as u64;
            steps.push(point(
                BatchShape::decode(b, kv),
                "decode",
                d + 50_000,
                60_000,
                d,
            ));
        }
    }
    // A transient batch seen at one KV length is left out.
    steps.push(point(
        BatchShape::decode(5, 130),
        "decode",
        2_000_000,
        60_000,
        1_900_000,
    ));
    let t = fit_decode(&steps).table;
    assert_eq!(t.len(), 2, "{t:?}");
    assert!(
        (t[0].1 - 1_000_000.0).abs() < 2.0 && (t[0].2 - 60.0).abs() < 1e-3,
        "{t:?}"
    );
    assert!(
        (t[1].1 - 1_400_000.0).abs() < 2.0 && (t[1].2 - 50.0).abs() < 1e-3,
        "{t:?}"
    );
}

#[test]
fn launch_fit_separates_graph_eager_lead_and_tail() {
    let mut steps = Vec::new();
    // Graph decodes: host 40 us + 0.5 us per request, device-bound, lead 30 us.
    for b in [1usize, 8, 64] {
        let host = 40_000 + 500 * b as u64;
        let dev = 1_000_000 + 2_000 * b as u64;
        steps.push(point(
            BatchShape::decode(b, 128),
            "decode",
            dev + 30_000,
            host,
            dev,
        ));
    }
    // Eager prefills: host 1.5 ms + 20 us per request + 10 ns per token; small ones are
    // host-bound with a 120 us tail, big ones device-bound.
    for (b, len) in [(1usize, 64usize), (2, 256), (4, 128), (16, 1024), (8, 2048)] {
        let tokens = b * len;
        let host = 1_500_000 + 20_000 * b as u64 + 10 * tokens as u64;
        let dev = 200_000 + 1_000 * tokens as u64;
        let ns = (host + 120_000).max(dev + 30_000);
        steps.push(point(BatchShape::prefill(b, len), "prefill", ns, host, dev));
    }
    let l = fit_launch(&steps, 256).expect("split measurements");
    assert!((l.graph_ns - 40_000.0).abs() < 1.0, "{l:?}");
    assert!((l.graph_per_req_ns - 500.0).abs() < 0.1, "{l:?}");
    assert!((l.eager_ns - 1_500_000.0).abs() < 1.0, "{l:?}");
    assert!((l.eager_per_req_ns - 20_000.0).abs() < 0.1, "{l:?}");
    assert!((l.eager_per_token_ns - 10.0).abs() < 1e-3, "{l:?}");
    assert_eq!((l.lead_ns, l.tail_ns), (30_000.0, 120_000.0), "{l:?}");
    assert!(fit_launch(&[StepPoint::of(&BatchShape::decode(1, 1), "decode", 1)], 8).is_none());
}
