//! Pieces shared by the benchmarks' command lines (each binary declares
//! its own with `clap`'s derive): value parsers with messages that name
//! what was expected, and writing a report to a file.

use std::path::Path;

/// A byte size such as `64M` or `4G` (frostheap's own size syntax), for
/// `#[arg(value_parser = cli::size)]`.
pub fn size(s: &str) -> Result<usize, String> {
    frostheap::parse_size(s)
        .map_err(|_| "expected a byte size such as 64M, 4G or 1.5GiB, below 16 EiB".to_string())
}

/// A whole number of at least 1, for counts of rounds and repetitions:
/// `#[arg(value_parser = cli::count)]`.
pub fn count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number of at least 1".to_string()),
    }
}

/// A finite number above 0, for scale factors:
/// `#[arg(value_parser = cli::positive)]`.
pub fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => Err("expected a number above 0".to_string()),
    }
}

/// Writes `text` to `path`, creating its directory; on failure prints
/// `<program>: cannot write <path>: <why>` and exits with status 1.
pub fn write_or_exit(program: &str, path: &Path, text: &[u8]) {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let written = dir
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, text));
    if let Err(e) = written {
        eprintln!("{program}: cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_accept_good_values_and_name_what_they_expected() {
        assert_eq!(size("64M"), Ok(64 << 20));
        assert!(size("lots").unwrap_err().contains("expected a byte size"));
        assert!(size("99999999999T").is_err());
        assert_eq!(count("3"), Ok(3));
        assert!(count("0").unwrap_err().contains("at least 1"));
        assert!(count("-1").is_err());
        assert_eq!(positive("0.5"), Ok(0.5));
        assert!(positive("0").is_err() && positive("inf").is_err() && positive("x").is_err());
    }

    #[test]
    fn writes_into_a_new_directory() {
        let dir = std::env::temp_dir().join(format!("frostheap-bench-cli-{}", std::process::id()));
        let path = dir.join("a/b/report.md");
        write_or_exit("test", &path, b"| a |\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "| a |\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
