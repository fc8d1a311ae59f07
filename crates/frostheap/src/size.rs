//! Byte sizes as people write them (`64M`, `1G`, `1.5GiB`, `512k`) and as
//! frostheap prints them.
//!
//! Units are binary: `K`, `KB` and `KiB` all mean 1024 bytes — the
//! convention of `-Xmx`, `ulimit` and cgroups. Parsing never allocates, so
//! the global allocator can use it on environment values before `main`.

use core::fmt;

/// Why a size did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// Empty, not a number, or an unknown unit.
    Malformed,
    /// The value does not fit in `usize`.
    TooLarge,
}

/// What [`parse_size`] accepts, for error messages.
pub const SIZE_SYNTAX: &str =
    "a byte size: a number with an optional unit B, K, M, G, T (or KB/KiB, MB/MiB, GB/GiB, TB/TiB), e.g. 64M, 1G, 1.5GiB";

/// Parses a size such as `4096`, `64M`, `1G`, `1.5GiB` or `512 KiB`.
///
/// Fractions are allowed with a unit (`1.5G`); the result must be a whole
/// number of bytes after scaling (up to 9 decimals are kept).
pub fn parse_size(text: &str) -> Result<usize, SizeError> {
    parse_size_bytes(text.as_bytes())
}

/// [`parse_size`] on raw bytes (environment values before `main`).
pub fn parse_size_bytes(text: &[u8]) -> Result<usize, SizeError> {
    let text = trim(text);
    let digits_end = text
        .iter()
        .position(|&c| !(c.is_ascii_digit() || c == b'.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let unit = trim(unit);
    if number.is_empty() || number.iter().filter(|&&c| c == b'.').count() > 1 {
        return Err(SizeError::Malformed);
    }
    let shift: u32 = match unit {
        b"" | b"b" | b"B" => 0,
        b"k" | b"K" | b"kb" | b"KB" | b"kB" | b"KiB" | b"kib" | b"Kib" => 10,
        b"m" | b"M" | b"mb" | b"MB" | b"MiB" | b"mib" | b"Mib" => 20,
        b"g" | b"G" | b"gb" | b"GB" | b"GiB" | b"gib" | b"Gib" => 30,
        b"t" | b"T" | b"tb" | b"TB" | b"TiB" | b"tib" | b"Tib" => 40,
        _ => return Err(SizeError::Malformed),
    };
    let dot = number.iter().position(|&c| c == b'.');
    let (whole, frac) = match dot {
        Some(i) => (&number[..i], &number[i + 1..]),
        None => (number, &number[..0]),
    };
    if whole.is_empty() && frac.is_empty() {
        return Err(SizeError::Malformed);
    }
    let mut value: u128 = 0;
    for &c in whole {
        value = value * 10 + u128::from(c - b'0');
        if value > u128::from(u64::MAX) {
            return Err(SizeError::TooLarge);
        }
    }
    let scaled_whole = value << shift;
    // Fractional part: value = frac_digits / 10^n, scaled by 2^shift,
    // computed as (frac_digits / 5^n) * 2^shift / 2^n with a u64 division
    // and shifts only: a u128 division calls the compiler's `__udivti3`,
    // laid far from the start-up code, and reading `FROSTHEAP_MAX=1G` at
    // start-up faulted in a second 64 KiB window of the library's code.
    let mut frac_num: u64 = 0;
    let mut fives: u64 = 1;
    let mut n = 0u32;
    for &c in frac.iter().take(9) {
        frac_num = frac_num * 10 + u64::from(c - b'0');
        fives *= 5;
        n += 1;
    }
    if frac.iter().skip(9).any(|&c| c != b'0') {
        return Err(SizeError::Malformed);
    }
    let scaled = u128::from(frac_num / fives) << shift;
    if !frac_num.is_multiple_of(fives) || scaled & ((1u128 << n) - 1) != 0 {
        // Not a whole number of bytes (e.g. "1.5B" or "0.1K").
        return Err(SizeError::Malformed);
    }
    let total = scaled_whole + (scaled >> n);
    usize::try_from(total).map_err(|_| SizeError::TooLarge)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Displays a byte count in binary units: `64 MiB`, `1.5 GiB`, `4096 B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Up to EiB: `usize::MAX` read "16777216.0 TiB".
        const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let n = self.0;
        let mut unit = 0;
        while unit + 1 < UNITS.len() && n >= 1usize << (10 * (unit + 1)) {
            unit += 1;
        }
        if unit == 0 {
            return write!(f, "{n} B");
        }
        let scale = 1usize << (10 * unit);
        if n.is_multiple_of(scale) {
            write!(f, "{} {}", n / scale, UNITS[unit])
        } else {
            write!(f, "{:.1} {}", n as f64 / scale as f64, UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size(" 512 KiB "), Ok(512 << 10));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert_eq!(parse_size("0.5k"), Ok(512));
    }

    #[test]
    fn rejects_what_is_not_a_size() {
        for bad in [
            "", "M", "12Q", "1.2.3G", "-5M", "1.5B", "0.1K", "abc", "1e9",
        ] {
            assert_eq!(parse_size(bad), Err(SizeError::Malformed), "{bad:?}");
        }
        assert_eq!(
            parse_size("99999999999999999999T"),
            Err(SizeError::TooLarge)
        );
    }

    #[test]
    fn fractions_are_exact_or_refused() {
        // Against the plain rational arithmetic: digits / 10^n * 2^shift
        // is accepted exactly when it is a whole number of bytes.
        for (unit, shift) in [("B", 0u32), ("K", 10), ("M", 20), ("G", 30), ("T", 40)] {
            for digits in 1..=4u32 {
                let den = 10u128.pow(digits);
                for num in (0..den).step_by(7).chain([den / 2, den / 4, den - 1]) {
                    let text = format!("3.{num:0width$}{unit}", width = digits as usize);
                    let scaled = num << shift;
                    let want = if scaled % den == 0 {
                        Ok(((3u128 << shift) + scaled / den) as usize)
                    } else {
                        Err(SizeError::Malformed)
                    };
                    assert_eq!(parse_size(&text), want, "{text}");
                }
            }
        }
        assert_eq!(parse_size("1.000000000G"), Ok(1 << 30));
        assert_eq!(parse_size("0.0009765625M"), Err(SizeError::Malformed));
        assert_eq!(parse_size("0.000976562K"), Err(SizeError::Malformed));
    }

    #[test]
    fn displays_binary_units() {
        assert_eq!(Bytes(4096).to_string(), "4 KiB");
        assert_eq!(Bytes(100).to_string(), "100 B");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(Bytes(1 << 50).to_string(), "1 PiB");
        assert_eq!(Bytes(usize::MAX).to_string(), "16.0 EiB");
    }
}
