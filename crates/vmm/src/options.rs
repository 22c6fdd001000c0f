//! The option grammar shared by `ferrovm run` and `ferrovm img` (QEMU's): byte sizes with
//! binary suffixes, and `key=value,key=value` lists where `,,` is a literal comma.

/// Error parsing a size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// Empty string.
    #[error("empty size")]
    Empty,
    /// Not a number with an optional suffix.
    #[error("invalid size {0:?}: expected a number with an optional K, M, G, T, P or E suffix (e.g. 128M, 1.5G, 0x10000)")]
    Invalid(String),
    /// Too large.
    #[error("size {0:?} is too large")]
    Overflow(String),
}

/// Parses a byte size: a decimal number, possibly with a fraction (`1.5G`), or `0x` hex,
/// with an optional binary suffix `K`, `M`, `G`, `T`, `P`, `E` (any case, optionally
/// followed by `iB` or `B`). A bare number is bytes; a fraction of a byte is dropped. The
/// largest size is `i64::MAX` (as QEMU's).
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(SizeError::Empty);
    }
    let invalid = || SizeError::Invalid(s.to_string());
    let overflow = || SizeError::Overflow(s.to_string());
    let limit = |v: u128| {
        u64::try_from(v)
            .ok()
            .filter(|&b| b <= i64::MAX as u64)
            .ok_or_else(overflow)
    };
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        return u128::from_str_radix(hex, 16)
            .map_err(|_| overflow())
            .and_then(limit);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        "P" | "PB" | "PIB" => 50,
        "E" | "EB" | "EIB" => 60,
        _ => return Err(invalid()),
    };
    let mult = 1u128 << shift;
    let digits = |d: &str| -> Result<u128, SizeError> {
        if d.is_empty() {
            Ok(0)
        } else {
            d.parse().map_err(|_| overflow())
        }
    };
    let bytes = match num.split_once('.') {
        None if num.is_empty() => return Err(invalid()),
        None => digits(num)?.checked_mul(mult).ok_or_else(overflow)?,
        Some((int, frac)) => {
            if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
                return Err(invalid());
            }
            // 18 fractional digits keep the product inside u128.
            let frac = &frac[..frac.len().min(18)];
            let scale = 10u128.pow(frac.len() as u32);
            let part = digits(frac)? * mult / scale;
            digits(int)?
                .checked_mul(mult)
                .and_then(|i| i.checked_add(part))
                .ok_or_else(overflow)?
        }
    };
    limit(bytes)
}

/// Splits `s` at single commas; `,,` stands for a literal comma.
pub fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' && chars.peek() == Some(&',') {
            chars.next();
            cur.push(',');
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// A boolean option value: `on`/`off` (also `true`/`false`, `yes`/`no`, `1`/`0`).
pub fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{key}={v:?}: expected on or off")),
    }
}

/// Formats a byte count for messages (e.g. `128 MiB`).
pub fn human_size(n: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("1P"), Ok(1 << 50));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 64MB "), Ok(64 << 20));
        assert_eq!(parse_size("0x10000"), Ok(0x10000));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size(".5K"), Ok(512));
        assert_eq!(parse_size("2.K"), Ok(2048));
        assert_eq!(parse_size("1.0000000000000000000001M"), Ok(1 << 20));
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        for bad in [
            "M", "12Q", "-1", "0xzz", "0x", "G12", ".", "1.2.3G", "1 G", "1KK",
        ] {
            assert!(
                matches!(parse_size(bad), Err(SizeError::Invalid(_))),
                "{bad}: {:?}",
                parse_size(bad)
            );
        }
        for big in [
            "99999999999999999999",
            "20000000T",
            "99999999E",
            "8E",
            "0x8000000000000000",
        ] {
            assert!(
                matches!(parse_size(big), Err(SizeError::Overflow(_))),
                "{big}: {:?}",
                parse_size(big)
            );
        }
    }

    #[test]
    fn options_split_at_single_commas() {
        assert_eq!(split_options("a=1,b=2"), vec!["a=1", "b=2"]);
        assert_eq!(split_options("path=a,,b,ro=on"), vec!["path=a,b", "ro=on"]);
        assert_eq!(split_options(""), vec![""]);
        assert_eq!(split_options("x,"), vec!["x", ""]);
    }

    #[test]
    fn booleans_and_human_sizes() {
        assert_eq!(on_off("readonly", "on"), Ok(true));
        assert_eq!(on_off("readonly", "0"), Ok(false));
        assert!(on_off("readonly", "maybe")
            .unwrap_err()
            .contains("readonly"));
        assert_eq!(human_size(128 << 20), "128 MiB");
        assert_eq!(human_size(3 << 30), "3 GiB");
        assert_eq!(human_size(1000), "1000 bytes");
    }
}
