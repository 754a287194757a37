//! Durations and rates as people write them on command lines and in
//! configuration: `500ms`, `10s`, `15m`, `2h`, `7d`; `8MiB/s`, `200MB`.

use std::time::Duration;

/// A byte count as people read it, in binary units with one decimal:
/// `512 B`, `1.5 KiB`, `3.0 GiB`, up to PiB.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Durations like `500ms`, `10s`, `15m`, `2h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 10s, 15m, 2h, 7d)"))?;
    let secs = |mul: u64| n.checked_mul(mul).map(Duration::from_secs).ok_or_else(|| format!("{s:?} is too long"));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!("unknown unit {unit:?} in {s:?}: use ms, s, m, h or d")),
    }
}

/// As [`parse_duration`], refusing zero (timeouts, periods).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// Bytes per second with an optional decimal or binary unit and an optional
/// `/s`: `8MiB/s`, `200MB`, `1G`, `4096`.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let rate = s.strip_suffix("/s").unwrap_or(s);
    let split = rate.find(|c: char| !c.is_ascii_digit()).unwrap_or(rate.len());
    let (digits, unit) = rate.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{s:?}: a rate starts with a whole number (e.g. 8MiB/s)"))?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("{s:?}: unknown unit {other:?} (B, KB, MB, GB, KiB, MiB, GiB)")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("{s:?}: the rate is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(human(5 << 50), "5.0 PiB");
        assert_eq!(human(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(parse_positive_duration("0s").unwrap_err(), "must be longer than zero");
        assert_eq!(parse_positive_duration("1ms"), Ok(Duration::from_millis(1)));
    }

    #[test]
    fn rates_parse_with_units() {
        assert_eq!(parse_rate("8MiB/s"), Ok(8 << 20));
        assert_eq!(parse_rate("3G"), Ok(3_000_000_000));
        assert_eq!(parse_rate("10"), Ok(10));
        assert!(parse_rate("fast").unwrap_err().contains("whole number"));
        assert!(parse_rate("5PB").unwrap_err().contains("unknown unit \"PB\""));
    }
}
