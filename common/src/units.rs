//! Byte sizes as people type and read them: `8MiB`, `16M`, `1.5 GiB`.

/// Parses a size: a number with an optional unit `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB`
/// (powers of 1024; `KB`, `MB`, `GB` are powers of 1000). Returns `None` for anything else.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return None,
    };
    if number.contains('.') {
        let value: f64 = number.parse().ok()?;
        let bytes = value * multiplier as f64;
        (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
    } else {
        number.parse::<u64>().ok()?.checked_mul(multiplier)
    }
}

/// A count and its noun: `1 file`, `3 files`.
pub fn counted(count: u64, singular: &str, plural: &str) -> String {
    format!("{count} {}", if count == 1 { singular } else { plural })
}

/// A size for people: `1.5 GiB`, `312.0 MiB`, `17 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The one duration grammar of every flag (`--interval`, `--max-duration`, `--older-than`,
/// `--job-retention`...): a sum of whole numbers with units `d`, `h`, `m`, `s` (`30d`, `6h`,
/// `1h30m`, `90s`), or a plain number of seconds. `None` for anything else (an unknown unit,
/// a unit without a number, or more seconds than a `u64` holds); callers bound the range.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(std::time::Duration::from_secs);
    }
    let mut seconds: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        let unit = match rest[digits..].chars().next()? {
            'd' => 86_400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        seconds = seconds.checked_add(number.checked_mul(unit)?)?;
        rest = &rest[digits + 1..];
    }
    Some(std::time::Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_duration_grammar_for_every_flag() {
        let secs = |n: u64| Some(std::time::Duration::from_secs(n));
        assert_eq!(parse_duration("30d"), secs(30 * 86_400));
        assert_eq!(parse_duration("12h"), secs(12 * 3600));
        assert_eq!(parse_duration("1h30m"), secs(5400));
        assert_eq!(parse_duration(" 90m "), secs(5400));
        assert_eq!(parse_duration("2d12h"), secs(216_000));
        assert_eq!(parse_duration("45s"), secs(45));
        assert_eq!(parse_duration("45"), secs(45));
        assert_eq!(parse_duration("0s"), secs(0));
        for bad in [
            "",
            "1w",
            "d",
            "h1",
            "1.5h",
            "1h 30m",
            "-1h",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("8MiB"), Some(8 << 20));
        assert_eq!(parse_size("16M"), Some(16 << 20));
        assert_eq!(parse_size("16 mib"), Some(16 << 20));
        assert_eq!(parse_size("5MB"), Some(5_000_000));
        assert_eq!(parse_size("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_size("4096"), Some(4096));
        for bad in [
            "",
            "MiB",
            "8 parsecs",
            "-1M",
            "1e9",
            "99999999999999999999G",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn one_of_a_thing_is_singular() {
        assert_eq!(counted(1, "file", "files"), "1 file");
        assert_eq!(counted(0, "file", "files"), "0 files");
        assert_eq!(counted(2, "pass", "passes"), "2 passes");
    }

    #[test]
    fn human_sizes_are_readable() {
        assert_eq!(human_bytes(17), "17 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
