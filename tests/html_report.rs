//! `report::html` opened in a real headless Chromium: the page renders, and
//! its inline SVG plot is visible in the screenshot (we look for the plot's
//! red line pixels), with the table text drawn too.
//!
//! Chromium comes from Debian (`apt-get install chromium`, done by
//! scripts/test.sh). Without it this test fails with a clear message, unless
//! `PRESCALE_SKIP_BROWSER=1` says the machine cannot run a browser.

use std::path::Path;
use std::process::Command;

use plotters::prelude::*;
use prescale::report::html::{render, Figure, Report, Table};

const CHROMIUM: &str = "/usr/bin/chromium";

fn plot_svg() -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 360)).into_drawing_area();
        root.fill(&WHITE).unwrap();
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .build_cartesian_2d(0f64..100f64, 0f64..100f64)
            .unwrap();
        chart
            .draw_series(AreaSeries::new(
                (0..100).map(|x| (x as f64, 30.0 + 20.0 * (x as f64 / 8.0).cos())),
                0.0,
                BLUE.mix(0.3),
            ))
            .unwrap();
        chart
            .draw_series(LineSeries::new(
                (0..100).map(|x| (x as f64, 55.0 + 35.0 * (x as f64 / 10.0).sin())),
                RED.stroke_width(5),
            ))
            .unwrap();
        root.present().unwrap();
    }
    svg
}

fn report() -> Report {
    Report {
        title: "prescale backtest — sample".into(),
        meta: vec![
            ("trace".into(), "data/sample.swf.gz".into()),
            ("seed".into(), "42".into()),
        ],
        tables: vec![Table {
            caption: "Per policy".into(),
            headers: [
                "policy",
                "cost_usd",
                "deadline_miss_rate",
                "queue_wait_p95_s",
            ]
            .map(String::from)
            .to_vec(),
            rows: vec![
                vec![
                    "reactive".into(),
                    "1234.50".into(),
                    "0.031".into(),
                    "812".into(),
                ],
                vec![
                    "predictive".into(),
                    "802.10".into(),
                    "0.012".into(),
                    "240".into(),
                ],
            ],
        }],
        figures: vec![Figure {
            caption: "Demand (red) and capacity (blue)".into(),
            svg: plot_svg(),
        }],
    }
}

fn screenshot(html: &Path, png: &Path, profile: &Path) {
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1200,900")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("run chromium");
    assert!(
        png.exists(),
        "chromium wrote no screenshot (status {:?}); stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Decodes a PNG into RGB pixels.
fn pixels(png: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let px = buf[..info.buffer_size()]
        .chunks(step)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    (info.width, info.height, px)
}

/// False (after a note) when the browser is missing and the caller allowed
/// skipping; panics with instructions when it is missing otherwise.
fn browser_available() -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    if std::env::var("PRESCALE_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {CHROMIUM} missing and PRESCALE_SKIP_BROWSER=1");
        return false;
    }
    panic!(
        "{CHROMIUM} not found: install Debian's chromium (`apt-get install -y chromium`, as scripts/test.sh does) \
         or set PRESCALE_SKIP_BROWSER=1 to skip this screenshot test"
    );
}

/// The page `prescale backtest --html` writes, built from a backtest report
/// (two policies over two days of 5-minute buckets), opened in Chromium.
#[test]
fn backtest_html_page_shows_table_and_plot_in_headless_chromium() {
    use prescale::sim::report::{BacktestReport, PolicyReport};
    use prescale::sim::Series;
    if !browser_available() {
        return;
    }
    let n = 576;
    let wave =
        |i: usize, a: f64, b: f64| a + b * ((i as f64) / 288.0 * std::f64::consts::TAU).sin();
    let series = |scale: f64, cost: f64| Series {
        start: 0,
        bucket_ms: 300_000,
        capacity_vcpus: (0..n).map(|i| wave(i, 120.0, 80.0) * scale).collect(),
        busy_vcpus: (0..n).map(|i| wave(i, 100.0, 70.0)).collect(),
        queued_vcpus: vec![0.0; n],
        cum_cost_usd: (0..n).map(|i| i as f64 * cost).collect(),
    };
    let mut report = BacktestReport::default();
    report.trace.file = "data/ricc-2010-2-excerpt.swf.gz".into();
    report.trace.jobs = 4000;
    report.trace.span_s = n as f64 * 300.0;
    report.demand = series(1.0, 0.0);
    for (name, scale, cost) in [("reactive", 1.3, 0.5), ("predictive", 1.05, 0.3)] {
        report.series.insert(name.into(), series(scale, cost));
        report.policies.insert(
            name.into(),
            PolicyReport {
                cost_usd: cost * n as f64,
                jobs: 4000,
                jobs_completed: 3990,
                ..Default::default()
            },
        );
    }
    let html = prescale::report::html::backtest(&report).expect("page renders");
    assert!(html.contains("<td>predictive</td>") && html.contains("<svg"));
    let dir = tempfile::tempdir().unwrap();
    let (html_path, png_path) = (
        dir.path().join("backtest.html"),
        dir.path().join("backtest.png"),
    );
    std::fs::write(&html_path, &html).unwrap();
    screenshot(&html_path, &png_path, &dir.path().join("profile"));
    if let Ok(keep) = std::env::var("PRESCALE_KEEP_SCREENSHOT") {
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::copy(&png_path, Path::new(&keep).join("backtest.png"));
    }
    let (_, _, px) = pixels(&png_path);
    let distinct: std::collections::HashSet<[u8; 3]> = px.iter().copied().collect();
    assert!(distinct.len() > 50, "page is nearly uniform");
    // Policy lines use plotters' pure colours (red, blue first).
    let red = px
        .iter()
        .filter(|p| p[0] > 200 && p[1] < 80 && p[2] < 80)
        .count();
    let blue = px
        .iter()
        .filter(|p| p[2] > 200 && p[0] < 80 && p[1] < 80)
        .count();
    assert!(
        red > 300 && blue > 300,
        "plot lines not visible: {red} red, {blue} blue pixels"
    );
}

#[test]
fn html_report_renders_with_visible_plot_in_headless_chromium() {
    if !browser_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let html_path = dir.path().join("report.html");
    let png_path = dir.path().join("shot.png");
    let html = render(&report());
    assert!(html.contains("<svg"), "figure inlined");
    std::fs::write(&html_path, &html).unwrap();
    screenshot(&html_path, &png_path, &dir.path().join("profile"));

    // PRESCALE_KEEP_SCREENSHOT=DIR keeps the page and the PNG for a human look.
    if let Ok(keep) = std::env::var("PRESCALE_KEEP_SCREENSHOT") {
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::copy(&png_path, Path::new(&keep).join("html_report.png"));
        let _ = std::fs::copy(&html_path, Path::new(&keep).join("html_report.html"));
    }
    let size = std::fs::metadata(&png_path).unwrap().len();
    assert!(
        size > 20_000,
        "screenshot suspiciously small ({size} bytes)"
    );
    let (w, h, px) = pixels(&png_path);
    assert_eq!((w, h), (1200, 900));
    let distinct: std::collections::HashSet<[u8; 3]> = px.iter().copied().collect();
    assert!(
        distinct.len() > 50,
        "page is nearly uniform: {} colours",
        distinct.len()
    );
    // The plot's thick red line: strongly red pixels.
    let red = px
        .iter()
        .filter(|p| p[0] > 200 && p[1] < 80 && p[2] < 80)
        .count();
    assert!(red > 2_000, "plot line not visible: {red} red pixels");
    // The translucent blue area under it.
    let blue = px
        .iter()
        .filter(|p| p[2] > 200 && p[0] < 215 && p[1] < 215 && p[2] as i32 - p[0] as i32 > 40)
        .count();
    assert!(blue > 5_000, "plot area not visible: {blue} blue pixels");
    // Text (title, table) in dark ink.
    let dark = px
        .iter()
        .filter(|p| p[0] < 90 && p[1] < 90 && p[2] < 90)
        .count();
    assert!(dark > 1_000, "no text drawn: {dark} dark pixels");
}
