//! `prescale backtest --html OUT.html`: one self-contained page (inline SVG
//! plots, the table, no external assets or scripts) an analyst can mail
//! around and open anywhere, offline.
//!
//! Pure: builds a `String`; the CLI writes it.

use std::fmt::Write as _;

/// A table: headers and rows of already-formatted cells.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub caption: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// An SVG figure (e.g. from plotters' `SVGBackend`) and its caption.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figure {
    pub caption: String,
    pub svg: String,
}

/// Everything on the page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub title: String,
    /// Key/value facts shown under the title (trace, seed, period...).
    pub meta: Vec<(String, String)>,
    pub tables: Vec<Table>,
    pub figures: Vec<Figure>,
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Makes an SVG document safe and fluid to inline: drops the XML prolog and
/// DOCTYPE, removes `<script>` elements and `on*=` handler attributes (the
/// page stays inert even if a caption or label smuggled markup into a plot),
/// and adds a `viewBox` when the root has only width/height so the figure
/// scales with the page.
pub fn sanitize_svg(svg: &str) -> String {
    let mut s = svg.trim().to_owned();
    // Prolog and doctype.
    for (open, close) in [("<?xml", "?>"), ("<!DOCTYPE", ">")] {
        while let Some(i) = s.find(open) {
            match s[i..].find(close) {
                Some(j) => s.replace_range(i..i + j + close.len(), ""),
                None => break,
            }
        }
    }
    // Scripts.
    loop {
        let lower = s.to_ascii_lowercase();
        let Some(i) = lower.find("<script") else {
            break;
        };
        let end = lower[i..]
            .find("</script>")
            .map(|j| i + j + "</script>".len())
            .or_else(|| lower[i..].find("/>").map(|j| i + j + 2))
            .unwrap_or(s.len());
        s.replace_range(i..end, "");
    }
    // Event-handler attributes: ` onload="..."` etc.
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_whitespace()
            && i + 3 < bytes.len()
            && bytes[i + 1].eq_ignore_ascii_case(&b'o')
            && bytes[i + 2].eq_ignore_ascii_case(&b'n')
            && bytes[i + 3].is_ascii_alphabetic()
        {
            // Find `=` then the quoted value.
            let mut j = i + 3;
            while j < bytes.len() && bytes[j].is_ascii_alphanumeric() {
                j += 1;
            }
            if j < bytes.len()
                && bytes[j] == b'='
                && j + 1 < bytes.len()
                && (bytes[j + 1] == b'"' || bytes[j + 1] == b'\'')
            {
                let q = bytes[j + 1];
                if let Some(k) = bytes[j + 2..].iter().position(|b| *b == q) {
                    i = j + 2 + k + 1;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    let mut s = out.trim().to_owned();
    if let Some(start) = s.find("<svg") {
        let head_end = s[start..].find('>').map(|j| start + j).unwrap_or(s.len());
        let head = s[start..head_end].to_owned();
        if !head.contains("viewBox") {
            if let (Some(w), Some(h)) = (attr(&head, "width"), attr(&head, "height")) {
                s.insert_str(start + 4, &format!(" viewBox=\"0 0 {w} {h}\""));
            }
        }
    }
    s
}

fn attr(head: &str, name: &str) -> Option<String> {
    let pat = format!(" {name}=\"");
    let i = head.find(&pat)? + pat.len();
    let j = head[i..].find('"')?;
    let v = head[i..i + j].trim_end_matches("px");
    v.parse::<f64>().ok().map(|_| v.to_owned())
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;max-width:1100px;padding:0 1rem;color:#1d2330;background:#fff}\
h1{font-size:1.6rem;margin-bottom:.2rem}\
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;color:#4a5263;font-size:.9rem}\
dl.meta dt{font-weight:600}dl.meta dd{margin:0}\
.tw{overflow-x:auto;margin:1rem 0}\
table{border-collapse:collapse;font-size:.85rem;width:100%}\
caption{text-align:left;font-weight:600;padding:.4rem 0}\
th,td{border-bottom:1px solid #dde1e8;padding:.3rem .45rem;text-align:right}\
th:first-child,td:first-child{text-align:left}\
thead th{background:#f3f5f8}\
figure{margin:1.5rem 0}figure svg{max-width:100%;height:auto;display:block}\
figcaption{color:#4a5263;font-size:.9rem;margin-top:.3rem}\
footer{color:#8a91a0;font-size:.8rem;margin-top:2rem}";

/// Renders the whole page.
pub fn render(report: &Report) -> String {
    let mut h = String::with_capacity(
        64 * 1024 + report.figures.iter().map(|f| f.svg.len()).sum::<usize>(),
    );
    let t = escape(&report.title);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\n\
<title>{t}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{t}</h1>\n"
    );
    if !report.meta.is_empty() {
        h.push_str("<dl class=\"meta\">\n");
        for (k, v) in &report.meta {
            let _ = writeln!(h, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(v));
        }
        h.push_str("</dl>\n");
    }
    for table in &report.tables {
        h.push_str("<div class=\"tw\"><table>\n");
        if !table.caption.is_empty() {
            let _ = writeln!(h, "<caption>{}</caption>", escape(&table.caption));
        }
        h.push_str("<thead><tr>");
        for c in &table.headers {
            let _ = write!(h, "<th scope=\"col\">{}</th>", escape(c));
        }
        h.push_str("</tr></thead>\n<tbody>\n");
        for row in &table.rows {
            h.push_str("<tr>");
            for c in row {
                let _ = write!(h, "<td>{}</td>", escape(c));
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</tbody>\n</table></div>\n");
    }
    for (i, f) in report.figures.iter().enumerate() {
        let _ = write!(
            h,
            "<figure id=\"fig{}\">\n{}\n",
            i + 1,
            sanitize_svg(&f.svg)
        );
        if !f.caption.is_empty() {
            let _ = writeln!(
                h,
                "<figcaption>Figure {}. {}</figcaption>",
                i + 1,
                escape(&f.caption)
            );
        }
        h.push_str("</figure>\n");
    }
    let _ = write!(
        h,
        "<footer>Generated by prescale {}.</footer>\n</body>\n</html>\n",
        env!("CARGO_PKG_VERSION")
    );
    h
}

/// One-call form for the backtest: title, one table, figures as
/// `(caption, svg)`.
pub fn render_simple(
    title: &str,
    headers: &[&str],
    rows: &[Vec<String>],
    figures: &[(String, String)],
) -> String {
    render(&Report {
        title: title.to_owned(),
        meta: Vec::new(),
        tables: vec![Table {
            caption: String::new(),
            headers: headers.iter().map(|s| s.to_string()).collect(),
            rows: rows.to_vec(),
        }],
        figures: figures
            .iter()
            .map(|(c, s)| Figure {
                caption: c.clone(),
                svg: s.clone(),
            })
            .collect(),
    })
}

/// The backtest page: trace facts, the per-policy table (the JSON report's
/// metrics) and the demand/capacity/cost plot, for
/// `prescale backtest --html OUT.html`.
pub fn backtest(report: &crate::sim::report::BacktestReport) -> Result<String, String> {
    let t = &report.trace;
    let names = report.ordered_names();
    let ratio = |r: Option<f64>| r.map_or("–".to_string(), |r| format!("{r:.2}×"));
    let base = report.policies.get("reactive").map(|r| r.cost_usd);
    let rows = names
        .iter()
        .map(|name| {
            let p = &report.policies[*name];
            let vs = match base {
                Some(b) if b > 0.0 => format!("{:+.1} %", (p.cost_usd / b - 1.0) * 100.0),
                _ => "–".into(),
            };
            vec![
                name.to_string(),
                format!("{:.2}", p.cost_usd),
                vs,
                match (&p.best_peer, p.cost_vs_best_peer) {
                    (Some(b), Some(r)) => format!("{r:.2}× ({b})"),
                    _ => "–".into(),
                },
                ratio(p.cost_vs_lower_bound),
                format!("{:.4}", p.deadline_miss_rate),
                format!("{:.0}", p.queue_wait_p50_s),
                format!("{:.0}", p.queue_wait_p95_s),
                format!("{:.3}", p.utilization),
                format!("{}/{}", p.jobs_completed, p.jobs),
                p.preemptions.to_string(),
                format!(
                    "{:.2}",
                    p.cost_by_market.get("SPOT").copied().unwrap_or(0.0)
                ),
                format!(
                    "{:.2}",
                    p.cost_by_market.get("ON_DEMAND").copied().unwrap_or(0.0)
                ),
                format!("{:.2}", p.budget_overrun_usd),
            ]
        })
        .collect();
    let headers = [
        "policy",
        "cost_usd",
        "vs reactive",
        "vs best peer",
        "vs lower bound",
        "deadline_miss_rate",
        "queue_wait_p50_s",
        "queue_wait_p95_s",
        "utilization",
        "jobs completed",
        "preemptions",
        "spot_usd",
        "on_demand_usd",
        "budget_overrun_usd",
    ];
    let svg = report.plot_svg()?;
    let bars = report.cost_bars_svg()?;
    let cost_rows = names
        .iter()
        .map(|name| {
            let p = &report.policies[*name];
            let od = p.cost_by_market.get("ON_DEMAND").copied().unwrap_or(0.0);
            vec![
                name.to_string(),
                format!("{:.2}", p.busy_usd),
                format!("{:.2}", p.idle_usd),
                format!("{:.2}", p.boot_usd),
                format!("{:.2}", p.lost_work_usd),
                if p.cost_usd > 0.0 {
                    format!("{:.1} %", od / p.cost_usd * 100.0)
                } else {
                    "–".into()
                },
                p.spot_launch_failures.to_string(),
                p.consolidations.to_string(),
            ]
        })
        .collect();
    let cost_headers = [
        "policy",
        "busy_usd",
        "idle_usd",
        "of which boot (est.)",
        "lost_work_usd",
        "on-demand share",
        "spot launch failures",
        "consolidations",
    ];
    Ok(render(&Report {
        title: format!("prescale backtest — {}", t.file),
        meta: vec![
            ("trace".into(), t.file.clone()),
            ("jobs".into(), t.jobs.to_string()),
            (
                "events".into(),
                format!("{} ({} price ticks)", t.events, t.price_ticks),
            ),
            (
                "compute environments".into(),
                t.compute_environments.to_string(),
            ),
            ("span".into(), format!("{:.1} h", t.span_s / 3600.0)),
            ("skipped records".into(), t.skipped_records.to_string()),
            ("seed".into(), t.seed.to_string()),
            (
                "lower bound".into(),
                format!(
                    "${:.2} (every job on the cheapest capacity that fits it, spot uninterrupted, perfectly packed, no idle or boot); on-demand only ${:.2}",
                    report.lower_bound_usd, report.lower_bound_on_demand_usd
                ),
            ),
        ],
        tables: vec![Table {
            caption: "Scaling policies compared".into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows,
        }, Table {
            caption: "Where the money goes".into(),
            headers: cost_headers.iter().map(|h| h.to_string()).collect(),
            rows: cost_rows,
        }],
        figures: vec![
            Figure {
                caption:
                    "Demand and each policy's capacity (vCPUs, top); cumulative cost (USD, bottom)"
                        .into(),
                svg,
            },
            Figure {
                caption: "Each policy's cost by instance type and market, busy against idle; the last bar is the lower bound".into(),
                svg: bars,
            },
        ],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_escaped_table_and_inline_figures() {
        let svg = "<?xml version=\"1.0\"?>\n<svg width=\"400\" height=\"200\" xmlns=\"http://www.w3.org/2000/svg\"><rect width=\"10\" height=\"10\"/></svg>";
        let html = render_simple(
            "Backtest <sample>",
            &["policy", "cost_usd"],
            &[
                vec!["reactive".into(), "12.50".into()],
                vec!["a&b".into(), "1".into()],
            ],
            &[("Demand & capacity".into(), svg.into())],
        );
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<title>Backtest &lt;sample&gt;</title>"));
        assert!(html.contains("<td>a&amp;b</td>"));
        assert!(
            html.contains("<svg viewBox=\"0 0 400 200\" width=\"400\""),
            "{html}"
        );
        assert!(!html.contains("<?xml"));
        assert!(html.contains("Figure 1. Demand &amp; capacity"));
        // Self-contained: nothing fetched from elsewhere.
        assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    }

    #[test]
    fn scripts_and_handlers_are_stripped_from_svg() {
        let svg = "<svg width=\"10\" height=\"10\" onload=\"alert(1)\"><script>alert(2)</script><text x=\"1\">ok</text><SCRIPT src=\"x\"/></svg>";
        let s = sanitize_svg(svg);
        assert!(!s.to_ascii_lowercase().contains("script"), "{s}");
        assert!(!s.contains("onload") && !s.contains("alert"), "{s}");
        assert!(s.contains("<text x=\"1\">ok</text>"), "{s}");
    }

    #[test]
    fn existing_viewbox_is_kept() {
        let s = sanitize_svg("<svg viewBox=\"0 0 5 5\" width=\"5\" height=\"5\"></svg>");
        assert_eq!(s.matches("viewBox").count(), 1);
    }
}
