//! Reading corpora: input discovery (files, folders, the embedded default corpus), `.gz`
//! decompression, and cutting text into documents.
//!
//! Plain text is cut per [`DocMode`] (paragraphs by default); JSONL gives one document per
//! line from a string field (`text` by default). Lines keep their text but lose a trailing
//! `\r` (CRLF files read like LF files); a document never ends with a newline. Documents that
//! are empty or only whitespace are dropped.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::read::MultiGzDecoder;

use crate::assets::DEFAULT_CORPUS_GZ;
use crate::error::{DataError, Result};
use crate::jsonl::{SkippedLine, SkippedLines, for_each_jsonl_line, json_message};
use crate::manifest::DocMode;

/// The name that selects the embedded default corpus (or tokenizer) on the command line.
pub const DEFAULT_NAME: &str = "default";

/// Where text comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// A file, or a folder searched recursively for `.txt`, `.text`, `.jsonl`, `.ndjson`
    /// (each optionally `.gz`) files, in sorted path order.
    Path(PathBuf),
    /// The corpus shipped inside this crate ([`crate::default_corpus_text`]).
    DefaultCorpus,
}

impl InputSource {
    /// `"default"` is the embedded corpus; anything else a path (write `./default` for a
    /// file of that name).
    pub fn parse(s: &str) -> Self {
        if s == DEFAULT_NAME {
            InputSource::DefaultCorpus
        } else {
            InputSource::Path(PathBuf::from(s))
        }
    }
}

impl std::fmt::Display for InputSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputSource::Path(p) => write!(f, "{}", p.display()),
            InputSource::DefaultCorpus => f.write_str(DEFAULT_NAME),
        }
    }
}

/// How an input file is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Plain UTF-8 text.
    Text,
    /// JSON Lines with a text field.
    Jsonl,
}

/// One concrete input (a file, or the embedded corpus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// The file (`None`: the embedded corpus).
    pub path: Option<PathBuf>,
    /// How to parse it.
    pub kind: InputKind,
    /// Size on disk (compressed size for `.gz`), for progress.
    pub size: u64,
}

impl InputFile {
    /// A label for messages.
    pub fn name(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => format!("<{DEFAULT_NAME} corpus>"),
        }
    }
}

/// How documents are taken from inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocOptions {
    /// How plain text is cut into documents.
    pub doc_mode: DocMode,
    /// The JSONL field holding the text.
    pub text_field: String,
    /// Fail on the first malformed JSONL line instead of skipping it.
    pub strict: bool,
}

impl Default for DocOptions {
    fn default() -> Self {
        Self {
            doc_mode: DocMode::Paragraph,
            text_field: "text".into(),
            strict: false,
        }
    }
}

fn kind_of(path: &Path) -> InputKind {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        InputKind::Jsonl
    } else {
        InputKind::Text
    }
}

fn is_corpus_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.starts_with('.') {
        return false;
    }
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    [".txt", ".text", ".jsonl", ".ndjson"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// Resolves sources to files: folders are walked recursively (sorted, corpus extensions
/// only); a file named explicitly is taken whatever its extension.
pub fn expand_inputs(sources: &[InputSource]) -> Result<Vec<InputFile>> {
    let mut out = Vec::new();
    for source in sources {
        match source {
            InputSource::DefaultCorpus => out.push(InputFile {
                path: None,
                kind: InputKind::Text,
                size: DEFAULT_CORPUS_GZ.len() as u64,
            }),
            InputSource::Path(path) => {
                let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
                if meta.is_dir() {
                    let mut files = Vec::new();
                    walk(path, &mut files)?;
                    files.sort();
                    for f in files {
                        let size = std::fs::metadata(&f)
                            .map_err(|e| DataError::io(&f, e))?
                            .len();
                        out.push(InputFile {
                            kind: kind_of(&f),
                            path: Some(f),
                            size,
                        });
                    }
                } else {
                    out.push(InputFile {
                        path: Some(path.clone()),
                        kind: kind_of(path),
                        size: meta.len(),
                    });
                }
            }
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_corpus_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Counts bytes read through it into a shared counter (for progress).
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn buffered(raw: impl Read + Send + 'static, gz: bool) -> Box<dyn BufRead + Send> {
    if gz {
        Box::new(BufReader::with_capacity(1 << 20, MultiGzDecoder::new(raw)))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, raw))
    }
}

fn is_gz(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// Opens a file for reading, decompressing `.gz`.
pub fn open_text(path: impl AsRef<Path>) -> Result<Box<dyn BufRead + Send>> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    Ok(buffered(file, is_gz(path)))
}

fn open_input(input: &InputFile, counter: Arc<AtomicU64>) -> Result<Box<dyn BufRead + Send>> {
    Ok(match &input.path {
        None => buffered(
            CountingReader {
                inner: DEFAULT_CORPUS_GZ,
                count: counter,
            },
            true,
        ),
        Some(path) => {
            let file = File::open(path).map_err(|e| DataError::io(path, e))?;
            buffered(
                CountingReader {
                    inner: file,
                    count: counter,
                },
                is_gz(path),
            )
        }
    })
}

/// Calls `f` with every document of `input`, in order. Malformed JSONL lines go to `skipped`
/// (or fail, with `opts.strict`); `counter` receives the raw bytes read, for progress.
pub fn for_each_document(
    input: &InputFile,
    opts: &DocOptions,
    counter: Arc<AtomicU64>,
    skipped: &mut Vec<SkippedLine>,
    mut f: impl FnMut(String) -> Result<()>,
) -> Result<()> {
    let name = input.name();
    let mut reader = open_input(input, counter)?;
    let mut emit = |doc: String| -> Result<()> {
        if doc.trim().is_empty() {
            Ok(())
        } else {
            f(doc)
        }
    };
    match input.kind {
        InputKind::Jsonl => {
            for_each_jsonl_line(
                reader,
                &name,
                opts.strict,
                skipped,
                |_, line| match text_field(line, &opts.text_field) {
                    Ok(text) => emit(text).map(Ok),
                    Err(reason) => Ok(Err(reason)),
                },
            )
        }
        InputKind::Text => {
            let mut doc = String::new();
            let mut buf = Vec::new();
            let mut line_no = 0usize;
            loop {
                buf.clear();
                let n = reader
                    .read_until(b'\n', &mut buf)
                    .map_err(|e| DataError::io(&name, e))?;
                if n == 0 {
                    break;
                }
                line_no += 1;
                let line = std::str::from_utf8(&buf).map_err(|e| {
                    DataError::Invalid(format!("{name}:{line_no}: not valid UTF-8 ({e})"))
                })?;
                let line = line.trim_end_matches('\n').trim_end_matches('\r');
                match opts.doc_mode {
                    DocMode::Line => emit(line.to_owned())?,
                    DocMode::Paragraph if line.trim().is_empty() => {
                        emit(std::mem::take(&mut doc))?;
                    }
                    DocMode::Paragraph | DocMode::File => {
                        if !doc.is_empty() {
                            doc.push('\n');
                        }
                        doc.push_str(line);
                    }
                }
            }
            emit(doc)
        }
    }
}

fn text_field(line: &str, field: &str) -> std::result::Result<String, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(json_message)?;
    match value.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "field `{field}` is not a string (found {})",
            json_kind(other)
        )),
        None => Err(format!("missing field `{field}`")),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// All documents of all inputs, in order (for tokenizer training), with the skipped lines
/// as `(file, line)` pairs.
pub fn read_documents(
    sources: &[InputSource],
    opts: &DocOptions,
) -> Result<(Vec<String>, SkippedLines)> {
    let mut docs = Vec::new();
    let mut all_skipped = Vec::new();
    for input in expand_inputs(sources)? {
        let mut skipped = Vec::new();
        for_each_document(&input, opts, Arc::default(), &mut skipped, |d| {
            docs.push(d);
            Ok(())
        })?;
        all_skipped.extend(skipped.into_iter().map(|s| (input.name(), s)));
    }
    Ok((docs, all_skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs_of(text: &str, mode: DocMode) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, text).unwrap();
        let opts = DocOptions {
            doc_mode: mode,
            ..DocOptions::default()
        };
        read_documents(&[InputSource::Path(path)], &opts).unwrap().0
    }

    #[test]
    fn paragraphs_lines_and_files() {
        let text = "a b\r\nc\n\n  \nd\n";
        assert_eq!(docs_of(text, DocMode::Paragraph), vec!["a b\nc", "d"]);
        assert_eq!(docs_of(text, DocMode::Line), vec!["a b", "c", "d"]);
        assert_eq!(docs_of(text, DocMode::File), vec!["a b\nc\n\n  \nd"]);
    }

    #[test]
    fn jsonl_text_field_with_skips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(
            &path,
            "{\"text\":\"one\"}\n{\"txt\":\"x\"}\n{\"text\":\"two\"}\n",
        )
        .unwrap();
        let (docs, skipped) =
            read_documents(&[InputSource::Path(path)], &DocOptions::default()).unwrap();
        assert_eq!(docs, vec!["one", "two"]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].1.line, 2);
        assert!(skipped[0].1.reason.contains("missing field `text`"));
    }
}
