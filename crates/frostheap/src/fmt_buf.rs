//! Formatting into a fixed stack buffer, for code that must not allocate:
//! start-up errors inside the global allocator, and the fault handler
//! (everything here is async-signal-safe: no allocation, no locks).

/// A byte buffer filled left to right; output past its end is dropped.
pub struct Buf<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Buf<'a> {
    /// An empty buffer over `buf`.
    pub fn new(buf: &'a mut [u8]) -> Buf<'a> {
        Buf { buf, len: 0 }
    }

    /// Appends bytes.
    pub fn bytes(mut self, b: &[u8]) -> Self {
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        self
    }

    /// Appends a string.
    pub fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }

    /// Appends `n` in hexadecimal (no prefix).
    pub fn hex(self, n: usize) -> Self {
        let mut digits = [0u8; 16];
        let mut i = digits.len();
        let mut v = n;
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[v & 15];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        self.bytes(&digits[i..])
    }

    /// Appends `n` in decimal.
    pub fn dec(self, n: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.bytes(&digits[i..])
    }

    /// Appends a byte count as [`crate::size::Bytes`] shows it (`64 MiB`,
    /// `63.9 KiB`, `1023 B`).
    pub fn size(self, n: usize) -> Self {
        let (whole, tenths, unit, _) = crate::size::shown(n);
        let b = self.dec(whole as u64);
        let b = match tenths {
            Some(t) => b.str(".").dec(t as u64),
            None => b,
        };
        b.str(" ").str(unit)
    }

    /// The bytes written so far.
    pub fn finish(self) -> &'a [u8] {
        let Buf { buf, len } = self;
        &buf[..len]
    }
}

#[cfg(test)]
mod tests {
    use super::Buf;

    #[test]
    fn formats_and_truncates() {
        let mut b = [0u8; 64];
        assert_eq!(
            Buf::new(&mut b)
                .str("x=")
                .dec(1234)
                .str(" 0x")
                .hex(0xbeef)
                .finish(),
            b"x=1234 0xbeef"
        );
        let mut small = [0u8; 4];
        assert_eq!(Buf::new(&mut small).str("abcdef").finish(), b"abcd");
        let mut z = [0u8; 8];
        assert_eq!(Buf::new(&mut z).dec(0).hex(0).finish(), b"00");
    }

    #[test]
    fn sizes_read_as_bytes_displays_them() {
        // The C library's lines said `1024.0 KiB` and `64.0 MiB` where the
        // Rust side said `1 MiB` and `64 MiB`.
        for n in [
            0,
            1023,
            1024,
            65_535,
            1 << 20,
            5_000,
            64 << 20,
            (3 << 29) + 1,
            usize::MAX,
        ] {
            let mut b = [0u8; 32];
            let shown = Buf::new(&mut b).size(n).finish();
            assert_eq!(shown, crate::size::Bytes(n).to_string().as_bytes(), "{n}");
        }
    }
}
