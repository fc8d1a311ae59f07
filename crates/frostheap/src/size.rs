//! Byte sizes as people write them (`64M`, `1G`, `1.5GiB`, `512k`) and as
//! frostheap prints them.
//!
//! Units are binary: `K`, `KB` and `KiB` all mean 1024 bytes — the
//! convention of `-Xmx`, `ulimit` and cgroups. Units are read without
//! regard to case (`1kb`, `1KIB`, `1mB` and `1Mib` are all accepted), so
//! `b` means bytes, never bits: every unit [`Bytes`] prints parses back,
//! and no spelling of a unit is accepted in one case and refused in
//! another. Parsing never allocates, so the global allocator can use it on
//! environment values before `main`.

use core::fmt;

/// Why a size did not parse: [`SizeError::kind`] says which way, and the
/// message names the input (up to [`SizeError::INPUT_KEPT`] bytes of it,
/// kept inline: parsing never allocates).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SizeError {
    kind: SizeErrorKind,
    /// The input's first `len` bytes (`cut`: it was longer).
    input: [u8; SizeError::INPUT_KEPT],
    len: u8,
    cut: bool,
}

/// The ways a size can fail to parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SizeErrorKind {
    /// Empty, not a number, or an unknown unit.
    Malformed,
    /// The value does not fit in `usize` (`16EiB` and more on 64 bits).
    TooLarge,
    /// A well-formed size that is not a whole number of bytes (`1.5B`,
    /// `0.1K`, `1.1G`).
    Fraction,
}

/// What to say of a size that is not a whole number of bytes.
pub const WHOLE_BYTES: &str =
    "a whole number of bytes: its decimals come to a fraction of a byte (1.1G does; 1.125G, 1126M or 1153433600 do not)";

impl SizeError {
    /// Bytes of the input an error keeps for its message.
    pub const INPUT_KEPT: usize = 48;

    pub(crate) fn new(kind: SizeErrorKind, text: &[u8]) -> SizeError {
        let mut input = [0u8; SizeError::INPUT_KEPT];
        let len = text.len().min(SizeError::INPUT_KEPT);
        input[..len].copy_from_slice(&text[..len]);
        SizeError {
            kind,
            input,
            len: len as u8,
            cut: text.len() > len,
        }
    }

    /// Which way the size failed to parse.
    pub fn kind(&self) -> SizeErrorKind {
        self.kind
    }

    /// The input (its first [`SizeError::INPUT_KEPT`] bytes).
    pub fn input(&self) -> &[u8] {
        &self.input[..usize::from(self.len)]
    }
}

/// One line: the input, as written (non-ASCII bytes escaped), and what
/// was expected, e.g. `invalid size "12Q": expected a byte size: ...`.
impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let more = if self.cut { "..." } else { "" };
        write!(
            f,
            "invalid size \"{}{more}\": expected ",
            self.input().escape_ascii()
        )?;
        match self.kind {
            SizeErrorKind::Malformed => f.write_str(SIZE_SYNTAX),
            SizeErrorKind::TooLarge => write!(
                f,
                "a size of at most {} bytes (2^{} - 1)",
                usize::MAX,
                usize::BITS
            ),
            SizeErrorKind::Fraction => f.write_str(WHOLE_BYTES),
        }
    }
}

impl fmt::Debug for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SizeError")
            .field("kind", &self.kind)
            .field("input", &self.input().escape_ascii().to_string())
            .field("cut", &self.cut)
            .finish()
    }
}

impl std::error::Error for SizeError {}

/// What [`parse_size`] accepts, for error messages.
pub const SIZE_SYNTAX: &str =
    "a byte size: a number with an optional binary unit B, K, M, G, T, P, E (or KB/KiB, MB/MiB, ..., EB/EiB; any case; at most 9 decimals), e.g. 64M, 1G, 1.5GiB";

/// Parses a size such as `4096`, `64M`, `1G`, `1.5GiB` or `512 KiB`.
///
/// The units are `B`, `K`, `M`, `G`, `T`, `P` and `E`, each alone or with
/// `B` or `iB` after it (`K`, `KB`, `KiB`), in any case, all binary (`1P`
/// is 2^50 bytes). Fractions are allowed with a unit (`1.5G`); the result
/// must be a whole number of bytes after scaling (up to 9 decimals are
/// kept). A value past `usize::MAX` (`16EiB` on 64 bits) is
/// [`SizeErrorKind::TooLarge`], anything else refused
/// [`SizeErrorKind::Malformed`]; the error's message names the input.
pub fn parse_size(text: &str) -> Result<usize, SizeError> {
    parse_size_bytes(text.as_bytes())
}

/// [`parse_size`] on raw bytes (environment values before `main`).
pub fn parse_size_bytes(text: &[u8]) -> Result<usize, SizeError> {
    parse_bytes(text).map_err(|kind| SizeError::new(kind, text))
}

/// The power of two a unit scales by (`b"KiB"`: 10), any case; `None` for
/// an unknown unit.
fn unit_shift(unit: &[u8]) -> Option<u32> {
    let (letter, rest) = match unit {
        [] => return Some(0),
        [letter, rest @ ..] => (letter.to_ascii_lowercase(), rest),
    };
    if letter == b'b' {
        return rest.is_empty().then_some(0);
    }
    let shift = match letter {
        b'k' => 10,
        b'm' => 20,
        b'g' => 30,
        b't' => 40,
        b'p' => 50,
        b'e' => 60,
        _ => return None,
    };
    match rest {
        [] => Some(shift),
        [b] if b.eq_ignore_ascii_case(&b'b') => Some(shift),
        [i, b] if i.eq_ignore_ascii_case(&b'i') && b.eq_ignore_ascii_case(&b'b') => Some(shift),
        _ => None,
    }
}

fn parse_bytes(text: &[u8]) -> Result<usize, SizeErrorKind> {
    let text = trim(text);
    let digits_end = text
        .iter()
        .position(|&c| !(c.is_ascii_digit() || c == b'.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let unit = trim(unit);
    if number.is_empty() || number.iter().filter(|&&c| c == b'.').count() > 1 {
        return Err(SizeErrorKind::Malformed);
    }
    let shift = unit_shift(unit).ok_or(SizeErrorKind::Malformed)?;
    let dot = number.iter().position(|&c| c == b'.');
    let (whole, frac) = match dot {
        Some(i) => (&number[..i], &number[i + 1..]),
        None => (number, &number[..0]),
    };
    if whole.is_empty() && frac.is_empty() {
        return Err(SizeErrorKind::Malformed);
    }
    let mut value: u128 = 0;
    for &c in whole {
        value = value * 10 + u128::from(c - b'0');
        if value > u128::from(u64::MAX) {
            return Err(SizeErrorKind::TooLarge);
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
        // Past the 9 decimals the syntax reads (a size that needs more,
        // 0.0009765625M, is written 1K).
        return Err(SizeErrorKind::Malformed);
    }
    let scaled = u128::from(frac_num / fives) << shift;
    if !frac_num.is_multiple_of(fives) || scaled & ((1u128 << n) - 1) != 0 {
        // Not a whole number of bytes (e.g. "1.5B" or "0.1K").
        return Err(SizeErrorKind::Fraction);
    }
    let total = scaled_whole + (scaled >> n);
    usize::try_from(total).map_err(|_| SizeErrorKind::TooLarge)
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
///
/// The rule: below 1 KiB, the exact count (`1023 B`); above, the largest
/// unit it reaches (up to EiB, the units [`parse_size`] reads back), as a
/// whole number when it is one (`64 KiB`), else with one decimal **rounded
/// down** (`63.9 KiB` for 65,535 bytes, `1023.9 KiB` for 1 MiB - 1,
/// `15.9 EiB` for `usize::MAX`). A shown size is never more than the
/// count, so a size below a bound never prints as the bound (rounding to
/// nearest printed 65,535 bytes as `64.0 KiB`, beside a bound of `64 KiB`
/// it was refused for being below).
///
/// The alternate form (`{:#}`) adds the exact count whenever the short one
/// is not exact: `63.9 KiB (65535 bytes)`, while `64 KiB` and `1.5 GiB`
/// stay as they are. Messages that compare a size with a bound print
/// both that way, so neither side of the comparison is blurred.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub usize);

/// How [`Bytes`] shows `n`: whole units, the tenths rounded down when
/// the count is not a whole number of units, the unit, and whether those
/// tenths are exact. Shared with [`crate::fmt_buf::Buf::size`], which
/// shows sizes where nothing may allocate (the C library's lines).
pub(crate) fn shown(n: usize) -> (usize, Option<usize>, &'static str, bool) {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && n >= 1usize << (10 * (unit + 1)) {
        unit += 1;
    }
    let shift = 10 * unit as u32;
    let whole = n >> shift;
    let rest = n & ((1usize << shift) - 1);
    if rest == 0 {
        return (whole, None, UNITS[unit], true);
    }
    // Tenths of the unit, rounded down, in integers (no f64 rounding
    // up): rest < 2^shift, so rest * 10 < 2^(shift + 4) fits in u128.
    let tenths = ((rest as u128 * 10) >> shift) as usize;
    let exact = (rest as u128 * 10) & ((1u128 << shift) - 1) == 0;
    (whole, Some(tenths), UNITS[unit], exact)
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match shown(self.0) {
            (whole, None, unit, _) => write!(f, "{whole} {unit}"),
            (whole, Some(tenths), unit, exact) => {
                write!(f, "{whole}.{tenths} {unit}")?;
                if f.alternate() && !exact {
                    write!(f, " ({} bytes)", self.0)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value, or only the kind of the error.
    fn kind(text: &str) -> Result<usize, SizeErrorKind> {
        parse_size(text).map_err(|e| e.kind())
    }

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
        for bad in ["", "M", "12Q", "1.2.3G", "-5M", "abc", "1e9"] {
            assert_eq!(kind(bad), Err(SizeErrorKind::Malformed), "{bad:?}");
        }
        for fraction in ["1.5B", "0.1K", "1.1G"] {
            assert_eq!(kind(fraction), Err(SizeErrorKind::Fraction), "{fraction:?}");
            let e = parse_size(fraction).unwrap_err().to_string();
            assert!(e.contains("a whole number of bytes"), "{e}");
        }
        assert_eq!(kind("99999999999999999999T"), Err(SizeErrorKind::TooLarge));
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
                        Err(SizeErrorKind::Fraction)
                    };
                    assert_eq!(kind(&text), want, "{text}");
                }
            }
        }
        assert_eq!(parse_size("1.000000000G"), Ok(1 << 30));
        assert_eq!(kind("0.0009765625M"), Err(SizeErrorKind::Malformed));
        assert_eq!(kind("0.000976562K"), Err(SizeErrorKind::Fraction));
    }

    #[test]
    fn displays_binary_units() {
        assert_eq!(Bytes(4096).to_string(), "4 KiB");
        assert_eq!(Bytes(100).to_string(), "100 B");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(Bytes(1 << 50).to_string(), "1 PiB");
    }

    /// A user's trial: `Heap::builder().max(65535)` was refused with
    /// `invalid max="64.0 KiB": expected at least 64 KiB`, and 1 MiB - 1
    /// printed as "1024.0 KiB": one decimal rounded to nearest.
    #[test]
    fn display_never_rounds_up_to_a_boundary() {
        assert_eq!(Bytes(65535).to_string(), "63.9 KiB");
        assert_eq!(Bytes((1 << 20) - 1).to_string(), "1023.9 KiB");
        assert_eq!(Bytes((1 << 30) - 1).to_string(), "1023.9 MiB");
        assert_eq!(Bytes(usize::MAX).to_string(), "15.9 EiB");
        assert_eq!(Bytes(1023).to_string(), "1023 B");
        assert_eq!(Bytes(1025).to_string(), "1.0 KiB");
        assert_eq!(Bytes(1126).to_string(), "1.0 KiB");
        assert_eq!(Bytes(1127).to_string(), "1.1 KiB");
        // The alternate form adds the exact count where the short form
        // is not exact.
        assert_eq!(format!("{:#}", Bytes(65535)), "63.9 KiB (65535 bytes)");
        assert_eq!(format!("{:#}", Bytes(1025)), "1.0 KiB (1025 bytes)");
        assert_eq!(format!("{:#}", Bytes(64 << 10)), "64 KiB");
        assert_eq!(format!("{:#}", Bytes(3 << 29)), "1.5 GiB");
        assert_eq!(format!("{:#}", Bytes(100)), "100 B");
        // Against the rational reference: the shown value is never above
        // the count and less than a tenth of a unit below it.
        for n in (1024usize..1 << 22)
            .step_by(997)
            .chain([usize::MAX, 1 << 63, 10_000_000_000])
        {
            let text = Bytes(n).to_string();
            let (number, unit) = text.split_once(' ').unwrap();
            let shift = 10
                * ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
                    .iter()
                    .position(|u| *u == unit)
                    .unwrap() as u32;
            let tenths = match number.split_once('.') {
                Some((w, d)) => w.parse::<u128>().unwrap() * 10 + d.parse::<u128>().unwrap(),
                None => number.parse::<u128>().unwrap() * 10,
            };
            let shown = tenths << shift; // ten times the bytes shown
            assert!(shown <= n as u128 * 10, "{n}: {text}");
            assert!(n as u128 * 10 - shown < 1 << shift, "{n}: {text}");
        }
    }

    /// A user's trial: `Bytes` printed "16.0 EiB" and "1 PiB", but
    /// `parse_size` refused "16EiB" and "1P" as malformed.
    #[test]
    fn every_unit_display_prints_parses_back() {
        for shift in 0..usize::BITS {
            for n in [1usize << shift, (1usize << shift) + (1usize << shift >> 1)] {
                let text = Bytes(n).to_string();
                // Where the short form is exact, it reads back as the count.
                if format!("{:#}", Bytes(n)) == text {
                    assert_eq!(parse_size(&text), Ok(n), "{text}");
                }
            }
        }
        assert_eq!(parse_size("1P"), Ok(1 << 50));
        assert_eq!(parse_size("1.5 PiB"), Ok(3 << 49));
        assert_eq!(parse_size("15EiB"), Ok(15 << 60));
        assert_eq!(parse_size("1E"), Ok(1 << 60));
        // Past usize::MAX: too large, not malformed.
        for big in [
            "16EiB",
            "16E",
            "17179869184G",
            "16384P",
            "18446744073709551616",
        ] {
            assert_eq!(kind(big), Err(SizeErrorKind::TooLarge), "{big}");
        }
        assert_eq!(parse_size("18446744073709551615"), Ok(usize::MAX));
        assert_eq!(parse_size("17179869183G"), Ok(17179869183 << 30));
    }

    /// A user's trial: "1kb" was accepted, "1mB" and "1KIB" refused.
    #[test]
    fn units_are_read_in_any_case() {
        fn cases(unit: &str) -> Vec<String> {
            let mut out = vec![unit.to_lowercase(), unit.to_uppercase()];
            // Every mix of upper and lower case letters.
            let letters: Vec<char> = unit.chars().collect();
            for mask in 0..1u32 << letters.len() {
                out.push(
                    letters
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            if mask & (1 << i) != 0 {
                                c.to_ascii_uppercase()
                            } else {
                                c.to_ascii_lowercase()
                            }
                        })
                        .collect(),
                );
            }
            out
        }
        for b in cases("B") {
            assert_eq!(parse_size(&format!("7{b}")), Ok(7), "{b}");
        }
        for (letter, shift) in [
            ("K", 10),
            ("M", 20),
            ("G", 30),
            ("T", 40),
            ("P", 50),
            ("E", 60),
        ] {
            for form in [
                letter.to_string(),
                format!("{letter}B"),
                format!("{letter}iB"),
            ] {
                for unit in cases(&form) {
                    for text in [format!("3{unit}"), format!("3 {unit}")] {
                        assert_eq!(parse_size(&text), Ok(3 << shift), "{text}");
                    }
                }
            }
        }
        for bad in [
            "1KI", "1kiib", "1bb", "1ib", "1Bi", "1KBB", "1iB", "1e9", "1Q",
        ] {
            assert_eq!(kind(bad), Err(SizeErrorKind::Malformed), "{bad}");
        }
    }

    #[test]
    fn an_error_names_the_input_and_what_was_expected() {
        let e = parse_size("12 parsecs").unwrap_err();
        assert_eq!(e.kind(), SizeErrorKind::Malformed);
        assert_eq!(e.input(), b"12 parsecs");
        assert_eq!(
            e.to_string(),
            format!("invalid size \"12 parsecs\": expected {SIZE_SYNTAX}")
        );
        let e = parse_size("16EiB").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "invalid size \"16EiB\": expected a size of at most {} bytes (2^64 - 1)",
                usize::MAX
            )
        );
        // Non-UTF-8 bytes are escaped; a long input is cut.
        let e = parse_size_bytes(b"5\xffM").unwrap_err();
        assert!(e.to_string().starts_with("invalid size \"5\\xffM\""), "{e}");
        let long = "9".repeat(100) + "Q";
        let e = parse_size(&long).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("invalid size \"{}...\"", &long[..48])),
            "{e}"
        );
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(!boxed.to_string().contains('\n'));
    }
}
