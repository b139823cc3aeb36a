//! Minimal SVG line charts for benchmark results (no plotting dependency needed for a few
//! lines on log axes).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// One named line of `(x, y)` points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const PALETTE: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf",
];

/// Writes a log-log line chart to `path` (SVG), creating the folder if needed.
pub fn log_log_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    chart(path, title, (x_label, Scale::Log), (y_label, Scale::Log), series)
}

/// How an axis maps values.
#[derive(Clone, Copy, PartialEq)]
pub enum Scale {
    Log,
    Linear,
}

impl Scale {
    fn map(self, v: f64) -> f64 {
        match self {
            Scale::Log => v.log10(),
            Scale::Linear => v,
        }
    }

    fn shows(self, v: f64) -> bool {
        v.is_finite() && (self == Scale::Linear || v > 0.0)
    }
}

/// A line chart of `series` as SVG: log axes get decade grid lines (y) and the data's x values
/// as ticks; a linear y axis gets five.
pub fn chart(
    path: &Path,
    title: &str,
    (x_label, x_scale): (&str, Scale),
    (y_label, y_scale): (&str, Scale),
    series: &[Series],
) -> Result<()> {
    let (w, h, left, right, top, bottom) = (760.0, 480.0, 70.0, 190.0, 40.0, 50.0);
    let finite = |x: f64, y: f64| x_scale.shows(x) && y_scale.shows(y);
    let points = || series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| finite(*x, *y));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points() {
        let (x, y) = (x_scale.map(*x), y_scale.map(*y));
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        anyhow::bail!("nothing to plot for {title}");
    }
    let (y0, y1) = match y_scale {
        Scale::Log => (y0.floor(), y1.ceil().max(y0.floor() + 1.0)),
        Scale::Linear => (y0.min(0.0), if y1 > y0.min(0.0) { y1 * 1.05 } else { 1.0 }),
    };
    let pad = match x_scale {
        Scale::Log => 0.05,
        Scale::Linear => 0.05 * (x1 - x0).max(1.0),
    };
    let (x0, x1) = (x0 - pad, x1 + pad);
    let px = |x: f64| left + (x_scale.map(x) - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| top + (y1 - y_scale.map(y)) / (y1 - y0) * (h - top - bottom);
    let mut svg = String::new();
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{title}</text>"#,
        (w - right + left) / 2.0
    )?;
    let y_ticks: Vec<(f64, String)> = match y_scale {
        Scale::Log => ((y0 as i32)..=(y1 as i32)).map(|d| (10f64.powi(d), format!("1e{d}"))).collect(),
        Scale::Linear => {
            (0..=4).map(|i| y0 + (y1 - y0) * i as f64 / 4.0).map(|v| (v, format!("{v:.3}"))).collect()
        }
    };
    for (value, label) in y_ticks {
        let y = py(value);
        writeln!(svg, r##"<line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/>"##, w - right)?;
        writeln!(svg, r#"<text x="{}" y="{}" text-anchor="end">{label}</text>"#, left - 6.0, y + 4.0)?;
    }
    let mut ticks: Vec<f64> = points().map(|(x, _)| *x).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for x in ticks {
        let xp = px(x);
        writeln!(svg, r##"<line x1="{xp}" x2="{xp}" y1="{top}" y2="{}" stroke="#eee"/>"##, h - bottom)?;
        let label = if x.fract() == 0.0 { format!("{x}") } else { format!("{x:.1}") };
        writeln!(svg, r#"<text x="{xp}" y="{}" text-anchor="middle">{label}</text>"#, h - bottom + 16.0)?;
    }
    writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        (w - right + left) / 2.0,
        h - 12.0
    )?;
    writeln!(
        svg,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{y_label}</text>"#,
        (h - bottom + top) / 2.0,
        (h - bottom + top) / 2.0
    )?;
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let shown: Vec<(f64, f64)> =
            s.points.iter().filter(|(x, y)| finite(*x, *y)).map(|(x, y)| (px(*x), py(*y))).collect();
        let path: Vec<String> = shown.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        )?;
        // Markers, so a series of one point (a single rule's result) shows too.
        for (x, y) in shown {
            writeln!(svg, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{colour}"/>"#)?;
        }
        let ly = top + 16.0 * i as f64 + 8.0;
        writeln!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="3"/>"#,
            w - right + 12.0,
            w - right + 32.0
        )?;
        writeln!(svg, r#"<text x="{}" y="{}">{}</text>"#, w - right + 38.0, ly + 4.0, s.name)?;
    }
    svg.push_str("</svg>\n");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}
