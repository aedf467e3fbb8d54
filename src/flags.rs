//! Flag values whose defaults are the libraries' named constants, so a
//! default is written once (in the library, with why) and `--help` still
//! shows it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use skiff_sdk::quantity;

/// A duration flag: `250ms`, `3s`, `2m`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = quantity::QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        quantity::parse_duration(s).map(Dur)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => write!(f, "0s"),
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1000) => write!(f, "{}s", ms / 1000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

/// A size flag: `16Mi`, `8Gi`, or bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = quantity::QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        quantity::parse_bytes(s).map(Size)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u32); 4] = [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
        for (unit, shift) in UNITS {
            if self.0 != 0 && self.0.trailing_zeros() >= shift {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_print_as_they_parse() {
        for text in ["250ms", "3s", "2m", "1h", "0s"] {
            assert_eq!(text.parse::<Dur>().unwrap().to_string(), text);
        }
        for text in ["16Mi", "8Gi", "1Ki", "1000", "0"] {
            assert_eq!(text.parse::<Size>().unwrap().to_string(), text);
        }
    }
}
