//! Spot price history importer.
//!
//! Accepts the two shapes public AWS spot histories come in:
//! - headerless TSV as published by `aws-spot-price-history`
//!   (`az_id  instance_type  product_description  price  timestamp`);
//! - CSV/TSV with a header naming the columns (any order): a timestamp
//!   (`timestamp`/`Timestamp`/`time`), `instance_type`/`InstanceType`,
//!   `product_description`/`ProductDescription` (optional), an availability
//!   zone or region (`AvailabilityZone`/`zone`/`az`/`region`) and a price
//!   (`SpotPrice`/`price`/`spot_price_usd_per_hour`).
//!
//! Plain, gzip or zstd. Only the chosen product (default `Linux/UNIX`) is kept.
//! Zone ids (`use1-az4`) and zone names (`us-east-1a`) map to their region.

use super::open_maybe_compressed;
use crate::events::{Market, PriceTick};
use crate::limits::{quote, MAX_NAME_LEN, MAX_PRICE_USD_PER_HOUR};
use serde::Serialize;
use std::io::BufRead;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PriceImportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: field `{field}`: {message}")]
    Field {
        path: String,
        line: u64,
        field: &'static str,
        message: String,
    },
    #[error("{path}: header has no `{column}` column (found: {found})")]
    Header {
        path: String,
        column: &'static str,
        found: String,
    },
}

#[derive(Debug, Clone)]
pub struct PriceOptions {
    pub product: String,
    pub provider: String,
    pub skip_bad: bool,
}

impl Default for PriceOptions {
    fn default() -> Self {
        PriceOptions {
            product: "Linux/UNIX".into(),
            provider: "aws".into(),
            skip_bad: false,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PriceReport {
    pub lines: u64,
    pub ticks: u64,
    pub other_products: u64,
    pub skipped_bad_lines: u64,
    pub bad_line_examples: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PriceImport {
    /// Spot ticks sorted by time.
    pub ticks: Vec<PriceTick>,
    pub report: PriceReport,
}

/// AWS global zone-id prefixes to region names.
const ZONE_ID_PREFIXES: &[(&str, &str)] = &[
    ("use1", "us-east-1"),
    ("use2", "us-east-2"),
    ("usw1", "us-west-1"),
    ("usw2", "us-west-2"),
    ("cac1", "ca-central-1"),
    ("euw1", "eu-west-1"),
    ("euw2", "eu-west-2"),
    ("euw3", "eu-west-3"),
    ("euc1", "eu-central-1"),
    ("eun1", "eu-north-1"),
    ("eus1", "eu-south-1"),
    ("aps1", "ap-south-1"),
    ("apne1", "ap-northeast-1"),
    ("apne2", "ap-northeast-2"),
    ("apne3", "ap-northeast-3"),
    ("apse1", "ap-southeast-1"),
    ("apse2", "ap-southeast-2"),
    ("sae1", "sa-east-1"),
    ("mes1", "me-south-1"),
    ("afs1", "af-south-1"),
    ("ape1", "ap-east-1"),
];

/// Region of a zone id (`use1-az4`) or zone name (`us-east-1a`), or the input
/// when it already is a region.
pub fn region_of_zone(zone: &str) -> String {
    if let Some((prefix, _)) = zone.split_once("-az") {
        if let Some((_, r)) = ZONE_ID_PREFIXES.iter().find(|(p, _)| *p == prefix) {
            return r.to_string();
        }
    }
    match zone.chars().last() {
        Some(c)
            if c.is_ascii_lowercase()
                && zone
                    .chars()
                    .rev()
                    .nth(1)
                    .is_some_and(|d| d.is_ascii_digit()) =>
        {
            zone[..zone.len() - 1].to_string()
        }
        _ => zone.to_string(),
    }
}

/// Parse an ISO-8601 / RFC 3339 timestamp (or epoch seconds) to epoch ms.
/// `None` for anything else, including a time outside the accepted window
/// ([`crate::limits::time_ok`]: `NaN`, `inf`, `-1e19` or `1e300` seconds
/// would otherwise saturate to 1970 or the integer limits).
pub fn parse_time_ms(s: &str) -> Option<i64> {
    parse_time_any(s).filter(|&t| crate::limits::time_ok(t))
}

fn parse_time_any(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        let ms = secs * 1000.0;
        // `as` saturates (NaN to 0): only convert what an i64 holds exactly
        return (ms.is_finite() && ms.abs() < 9.0e18).then_some(ms as i64);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%z"))
        .map(|d| d.timestamp_millis())
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S"))
                .ok()
                .map(|d| d.and_utc().timestamp_millis())
        })
}

struct Columns {
    time: usize,
    itype: usize,
    product: Option<usize>,
    zone: usize,
    price: usize,
}

fn find_col(h: &[String], names: &[&str]) -> Option<usize> {
    h.iter().position(|c| {
        let c = c.trim().to_ascii_lowercase().replace([' ', '-'], "_");
        names.contains(&c.as_str())
    })
}

fn columns_from_header(h: &[String], path: &str) -> Result<Columns, PriceImportError> {
    let need = |col: &'static str, names: &[&str]| {
        find_col(h, names).ok_or_else(|| PriceImportError::Header {
            path: path.to_string(),
            column: col,
            found: quote(&h.join(",")),
        })
    };
    Ok(Columns {
        time: need(
            "timestamp",
            &["timestamp", "time", "timestamp_iso8601", "at"],
        )?,
        itype: need("instance_type", &["instance_type", "instancetype", "type"])?,
        product: find_col(h, &["product_description", "productdescription", "product"]),
        zone: need(
            "zone/region",
            &[
                "availability_zone",
                "availabilityzone",
                "zone",
                "az",
                "az_id",
                "region",
            ],
        )?,
        price: need(
            "price",
            &[
                "spot_price",
                "spotprice",
                "price",
                "spot_price_usd_per_hour",
                "usd_per_hour",
            ],
        )?,
    })
}

/// Read a spot price history into `SPOT` price ticks.
pub fn read_prices(path: &Path, opts: &PriceOptions) -> Result<PriceImport, PriceImportError> {
    let p = path.display().to_string();
    let io = |source| PriceImportError::Io {
        path: p.clone(),
        source,
    };
    let reader = open_maybe_compressed(path).map_err(io)?;
    parse_prices(reader, &p, opts)
}

pub fn parse_prices(
    reader: impl BufRead,
    p: &str,
    opts: &PriceOptions,
) -> Result<PriceImport, PriceImportError> {
    let mut report = PriceReport::default();
    let mut ticks = Vec::new();
    let mut cols: Option<Columns> = None;
    let mut delim = '\t';
    for (i, line) in reader.lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = line.map_err(|source| PriceImportError::Io {
            path: p.to_string(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        report.lines += 1;
        if i == 0 {
            delim = if line.contains('\t') { '\t' } else { ',' };
            let fields: Vec<String> = line
                .split(delim)
                .map(|s| s.trim_matches('"').to_string())
                .collect();
            // A headerless file starts with data: its price column parses as a number.
            let headerless = fields.len() == 5 && fields[3].parse::<f64>().is_ok();
            if headerless {
                cols = Some(Columns {
                    zone: 0,
                    itype: 1,
                    product: Some(2),
                    price: 3,
                    time: 4,
                });
            } else {
                cols = Some(columns_from_header(&fields, p)?);
                continue;
            }
        }
        let c = cols.as_ref().expect("columns set on first line");
        let fields: Vec<&str> = line
            .split(delim)
            .map(|s| s.trim().trim_matches('"'))
            .collect();
        match parse_row(&fields, c, opts) {
            Ok(Some(t)) => ticks.push(t),
            Ok(None) => report.other_products += 1,
            Err((field, message)) => {
                let e = PriceImportError::Field {
                    path: p.to_string(),
                    line: line_no,
                    field,
                    message,
                };
                if !opts.skip_bad {
                    return Err(e);
                }
                report.skipped_bad_lines += 1;
                if report.bad_line_examples.len() < 5 {
                    report.bad_line_examples.push(e.to_string());
                }
            }
        }
    }
    ticks.sort_by_key(|t| t.at);
    report.ticks = ticks.len() as u64;
    Ok(PriceImport { ticks, report })
}

fn parse_row(
    f: &[&str],
    c: &Columns,
    opts: &PriceOptions,
) -> Result<Option<PriceTick>, (&'static str, String)> {
    let get = |i: usize, name: &'static str| f.get(i).copied().ok_or((name, "missing".to_string()));
    if let Some(pi) = c.product {
        if get(pi, "product_description")? != opts.product {
            return Ok(None);
        }
    }
    let at_s = get(c.time, "timestamp")?;
    let at = parse_time_ms(at_s).ok_or((
        "timestamp",
        format!(
            "`{}` is not an ISO-8601 time (or epoch seconds) between 1970 and 2200",
            quote(at_s)
        ),
    ))?;
    let itype = get(c.itype, "instance_type")?;
    if itype.is_empty() {
        return Err(("instance_type", "empty".into()));
    }
    if itype.len() > MAX_NAME_LEN {
        return Err((
            "instance_type",
            format!("`{}` is longer than {MAX_NAME_LEN} bytes", quote(itype)),
        ));
    }
    let zone = get(c.zone, "zone")?;
    if zone.is_empty() || zone.len() > MAX_NAME_LEN {
        return Err((
            "zone",
            format!(
                "`{}` is empty or longer than {MAX_NAME_LEN} bytes",
                quote(zone)
            ),
        ));
    }
    let price_s = get(c.price, "price")?;
    let price: f64 = price_s
        .parse()
        .ok()
        .filter(|p: &f64| p.is_finite() && *p > 0.0 && *p <= MAX_PRICE_USD_PER_HOUR)
        .ok_or((
            "price",
            format!(
                "`{}` is not a price in (0, {MAX_PRICE_USD_PER_HOUR}] USD/h",
                quote(price_s)
            ),
        ))?;
    let region = region_of_zone(zone);
    Ok(Some(PriceTick {
        at,
        provider: opts.provider.as_str().into(),
        zone: (region != zone).then(|| zone.into()),
        region: region.into(),
        instance_type: itype.into(),
        market: Market::Spot,
        usd_per_hour: price,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headerless_tsv() {
        let t = "euw3-az2\tg4dn.4xlarge\tLinux/UNIX\t0.466400\t2022-05-31T18:20:41+00:00\n\
euw3-az2\tg4dn.4xlarge\tSUSE Linux\t0.591400\t2022-05-31T18:20:41+00:00\n";
        let r = parse_prices(t.as_bytes(), "x", &PriceOptions::default()).unwrap();
        assert_eq!(r.ticks.len(), 1);
        assert_eq!(r.report.other_products, 1);
        assert_eq!(r.ticks[0].region, "eu-west-3");
        assert_eq!(r.ticks[0].zone.as_deref(), Some("euw3-az2"));
        assert_eq!(r.ticks[0].at, 1654021241000);
    }

    #[test]
    fn csv_with_header_any_order() {
        let t = "SpotPrice,Timestamp,InstanceType,AvailabilityZone,ProductDescription\n\
0.1,2022-01-01T00:00:00Z,m5.large,us-east-1a,Linux/UNIX\n\
oops,2022-01-01T00:00:00Z,m5.large,us-east-1a,Linux/UNIX\n";
        let e = parse_prices(t.as_bytes(), "p.csv", &PriceOptions::default()).unwrap_err();
        assert!(e.to_string().contains("p.csv:3: field `price`"), "{e}");
        let opts = PriceOptions {
            skip_bad: true,
            ..Default::default()
        };
        let r = parse_prices(t.as_bytes(), "p.csv", &opts).unwrap();
        assert_eq!(r.ticks[0].region, "us-east-1");
        assert_eq!(r.report.skipped_bad_lines, 1);
    }
}
