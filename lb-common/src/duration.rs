//! The one duration grammar, for the config file, control requests and the CLI: a whole
//! number followed by `ms`, `s`, `m`, `h` or `d` (`300ms`, `2s`, `30m`, `1h`, `1d`), or a
//! plain whole number of seconds (`30`); and its formatter, which writes what [`parse`]
//! reads back.

use std::time::Duration;

/// What [`parse`] accepts, for messages ("use …").
pub const HELP: &str = "a duration such as \"300ms\", \"2s\", \"30m\", \"1h\" or \"1d\" \
                        (units ms, s, m, h, d), or a whole number of seconds";

/// Parses a duration; the error says what was given and what is accepted.
pub fn parse(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not accepted: use {HELP}");
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let unit_s = match &t[digits..] {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_s)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long: use {HELP}"))
}

/// The largest unit that expresses `d` exactly, in whole milliseconds at least (finer
/// durations are rounded up): `90s`, `30m`, `1500ms`, `0s`.
pub fn format(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms == 0 {
        return "0s".to_string();
    }
    for (unit, name) in [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ] {
        if ms.is_multiple_of(unit) {
            return format!("{}{name}", ms / unit);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_grammar_and_formats_back() {
        for (s, want) in [
            ("300ms", Duration::from_millis(300)),
            ("2s", Duration::from_secs(2)),
            ("30m", Duration::from_secs(1800)),
            ("1h", Duration::from_secs(3600)),
            ("1d", Duration::from_secs(86_400)),
            ("45", Duration::from_secs(45)),
            ("0", Duration::ZERO),
            (" 2s ", Duration::from_secs(2)),
        ] {
            assert_eq!(parse(s), Ok(want), "{s}");
        }
        for s in [
            "",
            "s",
            "2x",
            "1.5s",
            "-1s",
            "2 s",
            "1w",
            "2S",
            "99999999999999999999d",
            "1e3",
        ] {
            let err = parse(s).unwrap_err();
            assert!(
                err.contains("\"300ms\", \"2s\", \"30m\", \"1h\" or \"1d\""),
                "{s}: {err}"
            );
        }
        for d in [
            Duration::from_millis(300),
            Duration::from_millis(1500),
            Duration::from_secs(90),
            Duration::from_secs(7200),
            Duration::from_secs(172_800),
        ] {
            assert_eq!(parse(&format(d)), Ok(d));
        }
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_secs(1800)), "30m");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_micros(1)), "1ms");
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
