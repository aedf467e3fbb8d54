//! Quantities as users write them in flags and manifests.
//!
//! - Byte sizes follow Kubernetes: a plain number of bytes, binary suffixes
//!   `Ki Mi Gi Ti` (powers of 1024) or decimal suffixes `k M G T` (powers of
//!   1000). Near misses such as `64Mb` or `64MB` are rejected with a hint,
//!   because guessing between 10^6 and 2^20 silently is how quotas go wrong.
//! - Durations: a number with a unit, `ms`, `s`, `m` or `h` (`500ms`, `5s`).
//! - Counts (fuel): a plain integer, `_` separators allowed, or a decimal
//!   suffix `k M G` (`500M` is 500,000,000).

use std::time::Duration;

/// Why a quantity did not parse. The message names the input and, where one
/// can be guessed, the spelling that was probably meant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not {expected}{}", hint.as_ref().map(|h| format!("; did you mean {h:?}?")).unwrap_or_default())]
pub struct QuantityError {
    /// The text that was given.
    pub input: String,
    /// What kind of quantity was expected, e.g. "a quantity".
    pub expected: &'static str,
    /// A likely intended spelling, if any.
    pub hint: Option<String>,
}

fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(s.len());
    s.split_at(end)
}

fn parse_int(digits: &str) -> Option<u64> {
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') {
        return None;
    }
    digits.replace('_', "").parse().ok()
}

/// Parses a byte size such as `64Mi`, `1G` or `4096`.
pub fn parse_bytes(input: &str) -> Result<u64, QuantityError> {
    let s = input.trim();
    let err = |hint: Option<String>| QuantityError {
        input: input.to_owned(),
        expected: "a quantity (bytes, or a number with Ki/Mi/Gi/Ti or k/M/G/T)",
        hint,
    };
    let (digits, suffix) = split_number(s);
    let n = parse_int(digits).ok_or_else(|| err(None))?;
    let mult: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        other => {
            // `64Mb`, `64MB`, `64m`, `64MiB`: the unit is recognisable, the
            // spelling is not; suggest the binary one, which is what memory
            // limits almost always mean.
            let lower = other.to_ascii_lowercase();
            // Split after the first character, not byte: the unit may be
            // any text (found by fuzzing: `"6\u{332}v"` panicked here).
            let first = lower.chars().next().map_or(0, char::len_utf8);
            let (head, tail) = lower.split_at(first);
            let hint = (["k", "m", "g", "t"].contains(&head)
                && ["", "b", "i", "ib"].contains(&tail))
            .then(|| format!("{digits}{}i", head.to_ascii_uppercase()));
            return Err(err(hint));
        }
    };
    n.checked_mul(mult).ok_or_else(|| err(None))
}

/// Parses a duration such as `5s`, `250ms`, `2m` or `1h`.
pub fn parse_duration(input: &str) -> Result<Duration, QuantityError> {
    let s = input.trim();
    let err = |hint: Option<String>| QuantityError {
        input: input.to_owned(),
        expected: "a duration (a number with ms, s, m or h)",
        hint,
    };
    let (digits, unit) = split_number(s);
    let n = parse_int(digits).ok_or_else(|| err(None))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| err(None)),
        "h" => n
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(|| err(None)),
        "" => Err(err(Some(format!("{digits}s")))),
        "sec" | "secs" | "second" | "seconds" => Err(err(Some(format!("{digits}s")))),
        _ => Err(err(None)),
    }
}

/// Parses a count such as `500000`, `1_000_000` or `500M`.
pub fn parse_count(input: &str) -> Result<u64, QuantityError> {
    let s = input.trim();
    let err = || QuantityError {
        input: input.to_owned(),
        expected: "a count (an integer, optionally with k, M or G)",
        hint: None,
    };
    let (digits, suffix) = split_number(s);
    let n = parse_int(digits).ok_or_else(err)?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

/// Formats a byte size the way [`parse_bytes`] reads it, choosing the largest
/// binary unit that divides it exactly (`134217728` becomes `128Mi`).
pub fn format_bytes(n: u64) -> String {
    for (shift, unit) in [(40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if n != 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("128M"), Ok(128_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("1_024Ki"), Ok(1 << 20));
        // Found by fuzzing: a unit starting with a multi-byte character.
        assert!(parse_bytes("6\u{332}v").is_err());
        let e = parse_bytes("64Mb").unwrap_err();
        assert_eq!(e.hint.as_deref(), Some("64Mi"));
        assert_eq!(
            e.to_string(),
            "\"64Mb\" is not a quantity (bytes, or a number with Ki/Mi/Gi/Ti or k/M/G/T); did you mean \"64Mi\"?"
        );
        assert_eq!(parse_bytes("2GB").unwrap_err().hint.as_deref(), Some("2Gi"));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("Mi").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999Ti").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(
            parse_duration("30").unwrap_err().hint.as_deref(),
            Some("30s")
        );
        assert!(parse_duration("1d").is_err());
    }

    #[test]
    fn counts_and_formatting() {
        assert_eq!(parse_count("500M"), Ok(500_000_000));
        assert_eq!(parse_count("1_000"), Ok(1000));
        assert!(parse_count("1.5k").is_err());
        assert_eq!(format_bytes(128 << 20), "128Mi");
        assert_eq!(format_bytes(1000), "1000");
    }
}
