//! Value parsers for numeric flags, so a hostile or mistyped number (`inf`,
//! `NaN`, `-1`, `1.5` for a fraction) is refused by clap with the flag named,
//! instead of bending the numbers or walking an endless time span.

/// Parse a finite `f64`; `NaN` and the infinities are refused by name.
fn finite(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{}` is not a number", prescale::limits::quote(s)))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{v} is not a finite number"))
    }
}

/// A rate (per hour, per second): finite and at least 0.
pub fn rate(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if v < 0.0 {
        return Err(format!("{v} is negative (a rate is at least 0)"));
    }
    Ok(v)
}

/// A strictly positive rate (messages per second).
pub fn positive_rate(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if v <= 0.0 {
        return Err(format!("{v} must be greater than 0"));
    }
    Ok(v)
}

/// A fraction strictly between 0 and 1 (a train/evaluation cut that leaves
/// both sides some data).
pub fn fraction_open(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if v <= 0.0 || v >= 1.0 {
        return Err(format!("{v} must be strictly between 0 and 1"));
    }
    Ok(v)
}

/// A fraction in (0, 1]: 1 means all of it.
pub fn fraction(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if v <= 0.0 || v > 1.0 {
        return Err(format!("{v} must be greater than 0 and at most 1"));
    }
    Ok(v)
}

/// A non-negative multiplier with a sane ceiling (deadline slack).
pub fn slack(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if !(0.0..=1000.0).contains(&v) {
        return Err(format!("{v} must be between 0 and 1000"));
    }
    Ok(v)
}

/// A positive number of days (`--last-days`).
pub fn days(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if v <= 0.0 || v > 36_500.0 {
        return Err(format!("{v} must be greater than 0 and at most 36500 days"));
    }
    Ok(v)
}

/// Seconds that must be greater than 0 (idle timeout: 0 would terminate
/// every instance the moment it idles and re-launch it each tick).
pub fn positive_secs(s: &str) -> Result<i64, String> {
    let v: i64 = s.trim().parse().map_err(|_| {
        format!(
            "`{}` is not a whole number of seconds",
            prescale::limits::quote(s)
        )
    })?;
    if !(1..=prescale::limits::MAX_DURATION_S).contains(&v) {
        return Err(format!(
            "{v} must be between 1 and {} seconds",
            prescale::limits::MAX_DURATION_S
        ));
    }
    Ok(v)
}

/// Seconds that may be 0 (boot delay, grace).
pub fn secs(s: &str) -> Result<i64, String> {
    match s.trim() {
        "0" => Ok(0),
        _ => positive_secs(s),
    }
}

/// A vCPU count of at least 1 (fleet sizes, caps).
pub fn vcpus(s: &str) -> Result<i64, String> {
    let v: i64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{}` is not a whole number", prescale::limits::quote(s)))?;
    if !(1..=prescale::limits::MAX_JOB_VCPUS).contains(&v) {
        return Err(format!(
            "{v} must be between 1 and {}",
            prescale::limits::MAX_JOB_VCPUS
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_numbers_are_refused() {
        for bad in ["inf", "NaN", "-1", "-inf", "x"] {
            assert!(rate(bad).is_err(), "{bad}");
        }
        assert_eq!(rate("0").unwrap(), 0.0);
        assert!(fraction_open("1.5").is_err() && fraction_open("1").is_err());
        assert!(fraction("1").is_ok() && fraction("0").is_err());
        assert!(slack("NaN").is_err());
        assert!(positive_secs("0").is_err() && secs("0").is_ok());
        assert!(vcpus("-1").is_err() && vcpus("0").is_err() && vcpus("8").is_ok());
        assert!(rate(&"9".repeat(10_000)).is_err()); // parses as inf
    }
}
