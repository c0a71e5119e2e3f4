//! A profile's per-row measurements (decode rows by batch size): interpolation and lookup.

/// A decode row's device time (ns) for `read` KV tokens at even lengths: interpolated through the
/// row's measured `points` (KV tokens read, ns) where it has two or more, the end segments
/// extended (a falling segment, noise, is taken as flat), else its line `(fixed, per KV
/// token)`.
pub(crate) fn decode_row_ns(line: (f64, f64), points: &[(f64, f64)], read: f64) -> f64 {
    if points.len() < 2 {
        return line.0 + line.1 * read;
    }
    let seg = points
        .windows(2)
        .position(|w| read <= w[1].0)
        .unwrap_or(points.len() - 2);
    let ((x0, y0), (x1, y1)) = (points[seg], points[seg + 1]);
    let slope = ((y1 - y0) / (x1 - x0)).max(0.0);
    (y0 + slope * (read - x0)).max(0.0)
}

/// The measured points of decode row `row` in a profile's `decode_kv_points` (none: its line
/// prices it).
pub(crate) fn points_of(points: &[(f64, Vec<(f64, f64)>)], row: f64) -> &[(f64, f64)] {
    points
        .iter()
        .find(|p| p.0 == row)
        .map_or(&[][..], |p| &p.1[..])
}

/// The value of the row of `rows` in a per-row list `(batch, value)` by increasing batch: its
/// own, else the nearest listed row's (the smaller on a tie); None when the list is empty.
pub(crate) fn nearest_row_value(list: &[(f64, f64)], rows: f64) -> Option<f64> {
    list.iter()
        .min_by(|x, y| (x.0 - rows).abs().total_cmp(&(y.0 - rows).abs()))
        .map(|x| x.1)
}
