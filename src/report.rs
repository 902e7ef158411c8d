//! Renders [`GraphError`]s for people, with miette: a header `error[FS0102]` (or
//! `warning[FS0108]`), the message (prefixed by the node it concerns), the file's lines around the
//! offending position under a `path:line:col` title with the position underlined, and the help
//! line; then one summary line, "2 errors, 1 warning in graph.yaml".
//!
//! Positions are the engine's: line and column from 1, the column counted in characters. An
//! error with no position (line 0: a `--set` flag, a whole-graph problem) renders without a
//! snippet; a position past the end of its line or of the file (which the engine should not
//! produce) is clamped to the end of that line or of the file.
//!
//! Nothing unbounded is echoed: a source line longer than [`MAX_LINE`] characters is cut around
//! the position (with `…` where text was left out; line numbers stay true), and a message longer
//! than [`MAX_MESSAGE`] characters (serde repeats a wrong value whole) is cut.
//!
//! Not here: choosing whether to colour (the caller knows whether it writes to a terminal),
//! reading the file, sorting (errors appear in the order given, which is the order found).

use flowseg_engine::spec::GraphError;
use miette::{
    Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, Severity,
    SourceSpan,
};
use std::fmt::{self, Write as _};

/// The report for `errors` found in `source` (the text of the file at `path`), ending with the
/// summary line. `color`: ANSI colours and styles (for a terminal); without, the output is plain
/// unicode text.
pub fn render(path: &str, source: &str, errors: &[GraphError], color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    // The snippet title is the source's name, which carries the position itself (in the
    // engine's character columns; miette's own would count bytes): no separate span start.
    let handler = GraphicalReportHandler::new_themed(theme)
        .without_primary_span_start()
        .with_wrap_lines(false);
    let mut out = String::new();
    for e in errors {
        let diagnostic = Report::new(path, source, e);
        let mut one = String::new();
        match handler.render_report(&mut one, &diagnostic) {
            Ok(()) => out.push_str(&one),
            // miette refused (it should not: spans are clamped into the text); the one-line form.
            Err(fmt::Error) => {
                let _ = writeln!(out, "{path}:{e}");
            }
        }
        if !out.ends_with("\n\n") {
            out.push('\n');
        }
    }
    let n_warn = errors.iter().filter(|e| e.warning).count();
    let n_err = errors.len() - n_warn;
    let _ = writeln!(
        out,
        "{n_err} {}, {n_warn} {} in {path}",
        plural(n_err, "error"),
        plural(n_warn, "warning"),
    );
    out
}

/// `errors` with each one that points at a `--set` override (`Loc::set_index`) saying which:
/// such an error has no place in the file to show, so its message names the flag itself.
pub fn name_flags(errors: &[GraphError], sets: &[String]) -> Vec<GraphError> {
    errors
        .iter()
        .cloned()
        .map(|mut e| {
            if let Some(flag) = e.loc.set_index().and_then(|i| sets.get(i)) {
                e.message = format!("{} (in `--set {flag}`)", e.message);
            }
            e
        })
        .collect()
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

/// The longest source line a snippet shows, in characters.
pub const MAX_LINE: usize = 160;
/// The longest message shown, in characters.
pub const MAX_MESSAGE: usize = 400;

/// `text` cut to `max` characters, with `…` where the rest was left out.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// `source` with every line longer than [`MAX_LINE`] characters cut — line `line` around column
/// `col`, the others at their start — and the column `col` moved to where it is in the cut line.
fn clip_lines(source: &str, line: u32, col: u32) -> (String, u32) {
    if source.lines().all(|l| l.chars().count() <= MAX_LINE) {
        return (source.to_owned(), col);
    }
    let mut shown_col = col;
    let mut out = String::with_capacity(source.len().min(1 << 16));
    for (i, l) in source.split_inclusive('\n').enumerate() {
        let (body, end) = match l.strip_suffix('\n') {
            Some(b) => (b.strip_suffix('\r').unwrap_or(b), "\n"),
            None => (l, ""),
        };
        let n = body.chars().count();
        if n <= MAX_LINE {
            out.push_str(body);
        } else if i + 1 == line as usize && col as usize > MAX_LINE / 2 {
            // A window around the position: `…` + MAX_LINE characters + `…`.
            let from = (col as usize - 1)
                .saturating_sub(MAX_LINE / 2)
                .min(n - MAX_LINE);
            let window: String = body.chars().skip(from).take(MAX_LINE).collect();
            out.push('…');
            out.push_str(&window);
            if from + MAX_LINE < n {
                out.push('…');
            }
            shown_col = u32::try_from(col as usize - from + 1).unwrap_or(u32::MAX);
        } else {
            out.push_str(&clip(body, MAX_LINE));
        }
        out.push_str(end);
    }
    (out, shown_col)
}

/// One [`GraphError`] as a miette diagnostic.
#[derive(Debug)]
struct Report<'a> {
    error: &'a GraphError,
    /// `error[FS0102]`: shown as the diagnostic's code, the first line of the report.
    code: String,
    /// The file, named `path:line:col`, and the span to underline; `None` without a position.
    snippet: Option<(NamedSource<String>, SourceSpan)>,
}

impl<'a> Report<'a> {
    fn new(path: &str, source: &str, error: &'a GraphError) -> Self {
        let kind = if error.warning { "warning" } else { "error" };
        let (shown, col) = clip_lines(source, error.loc.line, error.loc.col);
        let snippet = byte_offset(&shown, error.loc.line, col).map(|at| {
            let name = format!("{path}:{}:{}", error.loc.line, error.loc.col.max(1));
            let span = SourceSpan::new(at.into(), token_len(&shown[at..]));
            (NamedSource::new(name, shown.clone()), span)
        });
        Report {
            error,
            code: format!("{kind}[{}]", error.code),
            snippet,
        }
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(node) = &self.error.node {
            write!(f, "node `{node}`: ")?;
        }
        f.write_str(&clip(&self.error.message, MAX_MESSAGE))
    }
}

impl std::error::Error for Report<'_> {}

impl Diagnostic for Report<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(&self.code))
    }
    fn severity(&self) -> Option<Severity> {
        Some(if self.error.warning {
            Severity::Warning
        } else {
            Severity::Error
        })
    }
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.error
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.snippet
            .as_ref()
            .map(|(s, _)| s as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let (_, span) = self.snippet.as_ref()?;
        let text = match &self.error.node {
            Some(node) => format!("here, in node `{node}`"),
            None => "here".to_owned(),
        };
        Some(Box::new(std::iter::once(
            LabeledSpan::new_primary_with_span(Some(text), *span),
        )))
    }
}

/// The byte offset of `line:col` (from 1, the column in characters) in `source`; `None` for line
/// 0 (no position). Column 0 reads as 1; a column past the end of its line gives the end of the
/// line; a line past the last line break (or past the end) the end of the file's last line.
pub fn byte_offset(source: &str, line: u32, col: u32) -> Option<usize> {
    if line == 0 {
        return None;
    }
    let mut start = 0;
    for _ in 1..line {
        match source[start..].find('\n') {
            Some(nl) => start += nl + 1,
            None => {
                start = source.len();
                break;
            }
        }
    }
    if start == source.len() {
        // Past the last line break or past the last line (an error at the end of the file): the
        // end of the last line, so the snippet shows it with the mark after its last character.
        return Some(source.trim_end_matches(['\r', '\n']).len());
    }
    let text = &source[start..];
    let text = &text[..text.find(['\r', '\n']).unwrap_or(text.len())];
    let skip = usize::try_from(col.saturating_sub(1)).unwrap_or(usize::MAX);
    Some(start + text.char_indices().nth(skip).map_or(text.len(), |(i, _)| i))
}

/// Bytes to underline at the start of `rest`: a quoted scalar, or a run of plain characters up
/// to whitespace or YAML punctuation, or else the single character there; 0 at the end of a line.
fn token_len(rest: &str) -> usize {
    let line = &rest[..rest.find(['\r', '\n']).unwrap_or(rest.len())];
    let Some(first) = line.chars().next() else {
        return 0;
    };
    if first == '"' || first == '\'' {
        return line[1..].find(first).map_or(line.len(), |close| close + 2);
    }
    let plain = line
        .find(|c: char| c.is_whitespace() || ",:{}[]#".contains(c))
        .unwrap_or(line.len());
    if plain == 0 {
        first.len_utf8()
    } else {
        plain
    }
}

/// The exit code after writing the output: a closed pipe (`flowseg ops | head`) is not a
/// failure; any other write error is (1).
pub(crate) fn finish(
    result: std::io::Result<()>,
    err: &mut dyn std::io::Write,
) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(err, "error: cannot write the output: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{byte_offset, token_len};

    #[test]
    fn offsets_count_characters_from_one() {
        let s = "ab\nμx: 1\n";
        assert_eq!(byte_offset(s, 0, 3), None);
        assert_eq!(byte_offset(s, 1, 1), Some(0));
        assert_eq!(byte_offset(s, 1, 0), Some(0));
        assert_eq!(byte_offset(s, 2, 2), Some(5), "μ is 2 bytes");
        assert_eq!(byte_offset(s, 2, 99), Some(9), "clamped to the line's end");
        assert_eq!(
            byte_offset(s, 3, 1),
            Some(9),
            "after the last newline: the last line's end"
        );
        assert_eq!(byte_offset(s, 7, 1), Some(9), "clamped to the file's end");
        assert_eq!(byte_offset("a\nb", 7, 1), Some(3));
        assert_eq!(byte_offset("", 1, 1), Some(0));
        assert_eq!(byte_offset("\n\n", 3, 1), Some(0));
        assert_eq!(
            byte_offset("a\r\nb", 1, 5),
            Some(1),
            "CR is not in the line"
        );
    }

    #[test]
    fn tokens() {
        assert_eq!(token_len("factr: 2 }"), 5);
        assert_eq!(token_len("{ x: 1 }"), 1);
        assert_eq!(token_len("\"a b\", c"), 5);
        assert_eq!(token_len("\n"), 0);
        assert_eq!(token_len(""), 0);
        assert_eq!(token_len("μ"), 2);
    }
}
