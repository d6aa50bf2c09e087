//! Reading the operator's files (definitions, tokens) with a size limit: a path naming
//! `/dev/zero`, a FIFO or a directory is refused at once instead of being read until memory
//! runs out or forever.

use std::io::{self, Read};
use std::path::Path;

/// The largest main definition read: 1 GiB (a JSON definition of a million alarms is a
/// few hundred MiB).
pub const MAX_DEFINITION_BYTES: u64 = 1 << 30;

/// The largest file a definition includes (meter, event and resource definitions): 64 MiB.
pub const MAX_INCLUDED_BYTES: u64 = 64 << 20;

/// Reads `path` as UTF-8 text of at most `max` bytes. Errors say which limit or which kind of
/// file, and what to give instead.
pub fn read_text(path: &Path, max: u64) -> io::Result<String> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return Err(io::Error::other(
            "it is a directory; give the definition file inside it",
        ));
    }
    if !meta.is_file() {
        return Err(io::Error::other(
            "it is not a regular file (a device, FIFO or socket); give a file",
        ));
    }
    if meta.len() > max {
        return Err(io::Error::other(format!(
            "it has {} bytes, more than the {max} a definition may have",
            meta.len()
        )));
    }
    let mut text = String::new();
    // The file may grow between the check and the read: never read past the limit.
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(io::Error::other(format!(
            "it grew past the {max} bytes a definition may have while it was read"
        )));
    }
    Ok(text)
}

/// The deepest nesting of flow collections (`[`, `{`) a YAML or JSON text may have.
pub const MAX_NESTING: usize = 200;

/// The furthest column at which a YAML line's content may start (its indentation plus any
/// `- ` markers): block nesting is bounded by it.
pub const MAX_INDENT: usize = 1000;

/// Refuses, in one linear pass, YAML (or JSON) nested deeper than [`MAX_NESTING`] flow
/// levels or indented past [`MAX_INDENT`]: YAML parsers take quadratic time or their whole
/// recursion limit's worth of stack on such input before they refuse it. Quoted text and
/// comments are skipped; the error names the line.
pub fn check_nesting(text: &str) -> Result<(), String> {
    let b = text.as_bytes();
    let (mut depth, mut line, mut i) = (0usize, 1usize, 0usize);
    let mut quote: Option<u8> = None;
    let mut line_start = 0usize;
    // Whether the previous byte lets a quote or comment begin (start, blank, indicator).
    let mut boundary = true;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            line_start = i + 1;
            boundary = true;
            i += 1;
            continue;
        }
        if let Some(q) = quote {
            if c == b'\\' && q == b'"' {
                i += 2;
                continue;
            }
            if c == q {
                if q == b'\'' && b.get(i + 1) == Some(&b'\'') {
                    i += 2;
                    continue;
                }
                quote = None;
            }
            i += 1;
            continue;
        }
        if i == line_start {
            let content = b[i..]
                .iter()
                .position(|&c| c != b' ' && c != b'-' && c != b'\t')
                .unwrap_or(b.len() - i);
            if content > MAX_INDENT {
                return Err(format!(
                    "line {line}: nested or indented past column {MAX_INDENT}; a definition is never that deep"
                ));
            }
        }
        match c {
            b'"' | b'\'' if boundary => quote = Some(c),
            b'#' if boundary => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |n| i + n);
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!(
                        "line {line}: nested more than {MAX_NESTING} levels deep"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        boundary = matches!(c, b' ' | b'\t' | b'[' | b'{' | b',' | b':' | b'-' | b'?');
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_checked_in_one_pass() {
        assert!(check_nesting("a: [1, {b: [2]}]\n- x: '[[[['\n  y: \"{{\\\"[\" # [[[\n").is_ok());
        let flow = format!("sources: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(check_nesting(&flow).unwrap_err().contains("line 1"));
        let ok = format!("a: {}{}", "[".repeat(200), "]".repeat(200));
        assert!(check_nesting(&ok).is_ok());
        let block: String = (0..20_000)
            .map(|i| format!("{}- \n", " ".repeat(i)))
            .collect();
        assert!(check_nesting(&block).unwrap_err().contains("line 1000"));
        let dashes = format!("a:\n  {}x\n", "- ".repeat(5000));
        assert!(check_nesting(&dashes).unwrap_err().contains("line 2"));
        assert!(check_nesting("it's: don't [ worry").is_ok());
    }

    #[test]
    fn refuses_devices_directories_and_large_files() {
        let dir = std::env::temp_dir();
        let e = read_text(&dir, 100).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        let e = read_text(Path::new("/dev/zero"), 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let file = dir.join(format!("meterflow-files-{}", std::process::id()));
        std::fs::write(&file, "x".repeat(101)).unwrap();
        let e = read_text(&file, 100).unwrap_err().to_string();
        assert!(e.contains("101 bytes"), "{e}");
        assert_eq!(read_text(&file, 101).unwrap().len(), 101);
        std::fs::remove_file(&file).unwrap();
    }
}
