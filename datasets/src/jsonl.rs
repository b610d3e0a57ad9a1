//! A JSONL reader that never panics and is never silent: a malformed or invalid line is
//! either skipped and reported (with its 1-based line number) or, in strict mode, an error.
//! Blank lines are ignored. `.gz` files are decompressed.

use std::io::BufRead;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{DataError, Result};
use crate::input::open_text;

/// A record type's own checks, run after it parses (e.g. `gold` < number of choices).
pub trait Validate {
    /// `Err(reason)` when the record is unusable.
    fn validate(&self) -> std::result::Result<(), String>;
}

/// A line that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub reason: String,
}

impl std::fmt::Display for SkippedLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Skipped lines tagged with their file name.
pub type SkippedLines = Vec<(String, SkippedLine)>;

/// The records of a JSONL source, and the lines skipped (non-strict mode).
#[derive(Debug, Clone)]
pub struct JsonlRecords<T> {
    /// Parsed, valid records in file order.
    pub records: Vec<T>,
    /// Lines that were skipped (always empty in strict mode).
    pub skipped: Vec<SkippedLine>,
    /// 1-based line number of each record, so later stages can report problems by line.
    pub lines: Vec<usize>,
}

/// Reads and validates every record of a `.jsonl` (or `.jsonl.gz`) file.
///
/// With `strict`, the first bad line is a [`DataError::Jsonl`] naming the file and line;
/// without, bad lines are collected in [`JsonlRecords::skipped`].
pub fn read_jsonl<T: DeserializeOwned + Validate>(
    path: impl AsRef<Path>,
    strict: bool,
) -> Result<JsonlRecords<T>> {
    let path = path.as_ref();
    let reader = open_text(path)?;
    parse_jsonl(reader, &path.display().to_string(), strict)
}

/// Like [`read_jsonl`], from any reader; `source_name` labels errors.
pub fn parse_jsonl<T: DeserializeOwned + Validate>(
    reader: impl BufRead,
    source_name: &str,
    strict: bool,
) -> Result<JsonlRecords<T>> {
    let mut out = JsonlRecords {
        records: Vec::new(),
        skipped: Vec::new(),
        lines: Vec::new(),
    };
    for_each_jsonl_line(reader, source_name, strict, &mut out.skipped, |no, line| {
        let parsed = serde_json::from_str::<T>(line)
            .map_err(json_message)
            .and_then(|record| record.validate().map(|()| record));
        Ok(parsed.map(|record| {
            out.records.push(record);
            out.lines.push(no);
        }))
    })?;
    Ok(out)
}

/// Calls `f(line_number, text)` on every non-blank line. A line `f` rejects with `Ok(Err(reason))` (or one
/// that is not UTF-8) is pushed to `skipped`, or returned as an error in strict mode. I/O
/// errors and `f`'s own `Err` always fail.
pub(crate) fn for_each_jsonl_line(
    mut reader: impl BufRead,
    source_name: &str,
    strict: bool,
    skipped: &mut Vec<SkippedLine>,
    mut f: impl FnMut(usize, &str) -> Result<std::result::Result<(), String>>,
) -> Result<()> {
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| DataError::io(source_name, e))?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        let result = match std::str::from_utf8(&buf) {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => f(line_no, line.trim_end_matches(['\n', '\r']))?,
            Err(e) => Err(format!("not valid UTF-8 ({e})")),
        };
        if let Err(reason) = result {
            if strict {
                return Err(DataError::Jsonl {
                    source_name: source_name.to_owned(),
                    line: line_no,
                    message: reason,
                });
            }
            skipped.push(SkippedLine {
                line: line_no,
                reason,
            });
        }
    }
}

/// serde_json's message without its "at line 1" (we parse one line at a time).
pub(crate) fn json_message(e: serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(i) => format!("invalid JSON record: {} (column {})", &msg[..i], e.column()),
        None => format!("invalid JSON record: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Rec {
        x: i32,
    }

    impl Validate for Rec {
        fn validate(&self) -> std::result::Result<(), String> {
            if self.x < 0 {
                Err(format!("x is negative ({})", self.x))
            } else {
                Ok(())
            }
        }
    }

    const DATA: &str = "{\"x\": 1}\n\n{\"x\": oops}\n{\"x\": -2}\r\n{\"x\": 3}";

    #[test]
    fn lenient_mode_skips_and_reports_line_numbers() {
        let r: JsonlRecords<Rec> = parse_jsonl(DATA.as_bytes(), "mem", false).unwrap();
        assert_eq!(r.records, vec![Rec { x: 1 }, Rec { x: 3 }]);
        assert_eq!(r.lines, vec![1, 5]);
        assert_eq!(r.skipped.len(), 2);
        assert_eq!(r.skipped[0].line, 3);
        assert!(r.skipped[0].reason.contains("column"), "{}", r.skipped[0]);
        assert_eq!(r.skipped[1].line, 4);
        assert!(r.skipped[1].reason.contains("negative"));
    }

    #[test]
    fn strict_mode_fails_on_first_bad_line() {
        let err = parse_jsonl::<Rec>(DATA.as_bytes(), "mem", true).unwrap_err();
        assert!(err.to_string().starts_with("mem:3: invalid JSON"), "{err}");
    }
}
