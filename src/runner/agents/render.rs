//! Readable, coloured terminal lines for structured agents' activity.
//!
//! Every function returns whole lines ending in `"\r\n"` (the dashboard terminal is an xterm,
//! which needs the carriage return), ready for [`OutputSink::write`](super::OutputSink::write).
//! Each line carries its own colour and resets it, so a line read alone (scrollback, a resync
//! from an offset) still looks right.
//!
//! Text that comes from the agent is cleaned first: escape sequences are dropped and control
//! characters removed, so neither a model's reply nor a tool's output can move the cursor,
//! retitle the window or write to the clipboard of whoever watches the session.
//!
//! Streamed text ([`text_chunk`], [`thought_chunk`]) is the exception: it is written as it
//! arrives and may end mid-line; the adapter that streams breaks the line before what follows.
//!
//! [`LineInput`] is the other direction: keystrokes from the dashboard, echoed and collected into
//! the lines a structured agent gets as follow-up prompts.

use std::path::Path;

use serde_json::Value;

use super::{Decision, UsageUpdate};

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const DIM_ITALIC: &str = "\x1b[2;3m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";

/// A tool result shows this many lines, each at most [`MAX_COLUMNS`] characters.
const RESULT_LINES: usize = 6;
const MAX_COLUMNS: usize = 160;
/// A diff shows at most this many lines (a whole new file would flood the terminal).
const DIFF_LINES: usize = 80;
/// Unchanged lines kept around each change of a diff.
const DIFF_CONTEXT: usize = 2;
/// Above this many cells the line diff gives up on alignment and shows old, then new.
const DIFF_CELLS: usize = 1_000_000;

/// The agent's own words, as they are (one terminal line per line of text).
pub fn assistant_text(text: &str) -> String {
    paint_lines(&clean(text), "", "")
}

/// A piece of the agent's words as they stream in: cleaned, with terminal line ends, and without
/// a line end of its own (the next piece continues the line).
pub fn text_chunk(text: &str) -> String {
    paint_chunk(text, "")
}

/// A piece of the agent's reasoning as it streams in, dimmed; like [`text_chunk`] otherwise.
pub fn thought_chunk(text: &str) -> String {
    paint_chunk(text, DIM_ITALIC)
}

/// A prompt the agent is given: the task, or a line typed in the dashboard.
pub fn prompt(text: &str) -> String {
    paint_lines(&clean(text), BOLD, "› ")
}

/// A tool call: the tool's name and, in the same line, what it is about (see [`input_summary`]),
/// left out when the name already says it.
pub fn tool_call(tool: &str, summary: &str) -> String {
    let tool = one_line(&clean(tool), 100);
    let summary = one_line(&clean(summary), MAX_COLUMNS);
    if summary.is_empty() || tool.contains(&summary) {
        format!("{CYAN}▸ {BOLD}{tool}{RESET}\r\n")
    } else {
        format!("{CYAN}▸ {BOLD}{tool}{RESET}{CYAN} {summary}{RESET}\r\n")
    }
}

/// One line that says what a tool's input is about: the command (a string or an argv array),
/// path, URL or query when the input names one, else its scalar fields as `key=value` (never raw
/// JSON). Shortened; cleaned of control characters.
pub fn input_summary(input: &Value) -> String {
    const NAMED: [&str; 13] = [
        "command",
        "cmd",
        "commandLine",
        "file_path",
        "filePath",
        "notebook_path",
        "path",
        "url",
        "uri",
        "query",
        "pattern",
        "description",
        "prompt",
    ];
    let text = match input {
        Value::String(s) => s.clone(),
        Value::Object(fields) => NAMED
            .iter()
            .find_map(|key| match fields.get(*key)? {
                Value::String(s) => Some(s.clone()),
                Value::Array(argv) => {
                    let argv: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
                    (!argv.is_empty()).then(|| {
                        shlex::try_join(argv.iter().copied()).unwrap_or_else(|_| argv.join(" "))
                    })
                }
                _ => None,
            })
            .unwrap_or_else(|| {
                let scalars: Vec<String> = fields
                    .iter()
                    .filter_map(|(key, value)| match value {
                        Value::String(s) => Some(format!("{key}={s}")),
                        Value::Number(n) => Some(format!("{key}={n}")),
                        Value::Bool(b) => Some(format!("{key}={b}")),
                        _ => None,
                    })
                    .collect();
                scalars.join(" ")
            }),
        _ => String::new(),
    };
    let text = clean(&text);
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let more = lines.count();
    let first = one_line(first, MAX_COLUMNS);
    if more > 0 {
        format!("{first} … (+{more} lines)")
    } else {
        first
    }
}

/// A tool's result, shortened to its first lines; red when the tool failed.
pub fn tool_result(text: &str, is_error: bool) -> String {
    let text = clean(text);
    let lines: Vec<&str> = text.lines().collect();
    let colour = if is_error { RED } else { DIM };
    let mut out = String::new();
    if lines.iter().all(|l| l.trim().is_empty()) {
        let what = if is_error {
            "(failed, no output)"
        } else {
            "(no output)"
        };
        out.push_str(&format!("{colour}  ⎿ {what}{RESET}\r\n"));
        return out;
    }
    for (i, line) in lines.iter().take(RESULT_LINES).enumerate() {
        let lead = if i == 0 { "  ⎿ " } else { "    " };
        out.push_str(&format!(
            "{colour}{lead}{}{RESET}\r\n",
            one_line(line, MAX_COLUMNS)
        ));
    }
    if lines.len() > RESULT_LINES {
        out.push_str(&format!(
            "{DIM}    … {} more lines{RESET}\r\n",
            lines.len() - RESULT_LINES
        ));
    }
    out
}

/// How a tool call ended, under it: a green tick or a red cross, and a few words.
pub fn tool_status(ok: bool, text: &str) -> String {
    let text = one_line(&clean(text), MAX_COLUMNS);
    if ok {
        format!("{GREEN}  ✔ {text}{RESET}\r\n")
    } else {
        format!("{RED}  ✘ {text}{RESET}\r\n")
    }
}

/// A file edit as a diff: the path (and whatever the caller adds to it, such as `(added)`), then
/// removed lines in red and added lines in green, with a little unchanged context around each
/// change. A new file is `old = ""`.
pub fn diff(path: &str, old: &str, new: &str) -> String {
    let (old, new) = (clean(old), clean(new));
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    let ops = line_diff(&old_lines, &new_lines);
    // Which unchanged lines stay: those within DIFF_CONTEXT of a change.
    let near_change: Vec<bool> = (0..ops.len())
        .map(|i| {
            let lo = i.saturating_sub(DIFF_CONTEXT);
            let hi = (i + DIFF_CONTEXT + 1).min(ops.len());
            ops[lo..hi].iter().any(Op::is_change)
        })
        .collect();
    let mut shown = Vec::new();
    let mut gap = false;
    for (op, near) in ops.into_iter().zip(near_change) {
        if !near {
            gap = true;
            continue;
        }
        if gap {
            shown.push(Op::Gap);
            gap = false;
        }
        shown.push(op);
    }
    paint_diff(path, &shown)
}

/// A file edit given as a unified diff (its `@@` hunks; file headers are skipped), painted like
/// [`diff`].
pub fn unified_diff(path: &str, text: &str) -> String {
    let text = clean(text);
    let mut ops = Vec::new();
    let mut in_hunk = false;
    for line in text.lines() {
        if let Some(header) = line.strip_prefix("@@") {
            // Unchanged lines are skipped before every hunk but one that starts the file.
            let old_start = header
                .trim_start()
                .strip_prefix('-')
                .and_then(|rest| rest.split([',', ' ']).next())
                .and_then(|n| n.parse::<u64>().ok());
            if !ops.is_empty() || old_start.is_none_or(|n| n > 1) {
                ops.push(Op::Gap);
            }
            in_hunk = true;
            continue;
        }
        if !in_hunk {
            continue;
        }
        match line.chars().next() {
            Some('+') => ops.push(Op::Add(&line[1..])),
            Some('-') => ops.push(Op::Del(&line[1..])),
            Some(' ') => ops.push(Op::Same(&line[1..])),
            None => ops.push(Op::Same("")),
            // `\ No newline at end of file`.
            Some('\\') => {}
            // The next file's header (`diff --git`, `index`, `---`, `+++`): up to its first hunk.
            Some(_) => in_hunk = false,
        }
    }
    paint_diff(path, &ops)
}

/// The closing line of a turn or session: done or failed, with the usage figures known.
pub fn summary(ok: bool, usage: &UsageUpdate) -> String {
    let head = if ok {
        format!("{GREEN}{BOLD}✔ done{RESET}")
    } else {
        format!("{RED}{BOLD}✘ failed{RESET}")
    };
    let mut parts = Vec::new();
    if let Some(n) = usage.tokens_in {
        parts.push(format!("{n} tokens in"));
    }
    if let Some(n) = usage.tokens_out {
        parts.push(format!("{n} out"));
    }
    if let Some(n) = usage.api_calls {
        parts.push(format!("{n} API calls"));
    }
    if let Some(cost) = usage.cost_usd {
        parts.push(format!("${cost:.4}"));
    }
    if parts.is_empty() {
        format!("{head}\r\n")
    } else {
        format!("{head}{DIM} · {}{RESET}\r\n", parts.join(" · "))
    }
}

/// Something went wrong (the agent's error, a protocol failure).
pub fn error(text: &str) -> String {
    paint_lines(&clean(text), RED, "✘ ")
}

/// Background information: the agent's stderr, lines that are not protocol, status changes.
pub fn note(text: &str) -> String {
    paint_lines(&clean(text), DIM, "")
}

/// Something worth a look that does not stop the agent: a warning, a retry.
pub fn warning(text: &str) -> String {
    paint_lines(&clean(text), YELLOW, "⚠ ")
}

/// A stop on its way or done: interrupting, cancelled, interrupted.
pub fn stop(text: &str) -> String {
    paint_lines(&clean(text), YELLOW, "■ ")
}

/// Where a step of a plan is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Done,
    Doing,
    Todo,
}

/// The agent's plan: one line a step, `[x]` done, `[~]` under way, `[ ]` to do.
pub fn plan<'a>(steps: impl IntoIterator<Item = (Step, &'a str)>) -> String {
    let mut out = format!("{BOLD}Plan{RESET}\r\n");
    for (step, text) in steps {
        let (mark, colour) = match step {
            Step::Done => ("[x]", GREEN),
            Step::Doing => ("[~]", YELLOW),
            Step::Todo => ("[ ]", ""),
        };
        let text = one_line(&clean(text), MAX_COLUMNS);
        out.push_str(&paint_lines(&format!("  {mark} {text}"), colour, ""));
    }
    out
}

/// A path as the terminal shows it: relative to the workspace when inside it.
pub fn shown_path(workspace: &Path, path: &Path) -> String {
    path.strip_prefix(workspace)
        .ok()
        .filter(|rel| !rel.as_os_str().is_empty())
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// An approval is being asked for; the agent waits for it. The session manager writes this line
/// and [`approval_answered`]'s for every approval (an agent's permission request or `village
/// approval request`), so that each shows once; the adapters write neither.
pub fn approval_asked(action: &str, description: &str) -> String {
    format!(
        "{YELLOW}⏸ waiting for approval ({action}): {}{RESET}\r\n",
        one_line(&clean(description), 200)
    )
}

/// A request an earlier "allow for this session" covers: no one is asked.
pub fn approval_covered(description: &str) -> String {
    format!(
        "{GREEN}✔ allowed for the session: {}{RESET}\r\n",
        one_line(&clean(description), 200)
    )
}

/// The answer to an approval.
pub fn approval_answered(decision: &Decision) -> String {
    let reason = decision
        .reason
        .as_deref()
        .map(|r| format!(": {}", one_line(&clean(r), 200)))
        .unwrap_or_default();
    match (decision.allow, decision.for_session) {
        (true, false) => format!("{GREEN}✔ allowed{reason}{RESET}\r\n"),
        (true, true) => format!("{GREEN}✔ allowed for the session{reason}{RESET}\r\n"),
        (false, _) => format!("{RED}✘ denied{reason}{RESET}\r\n"),
    }
}

/// Keystrokes collected into lines: printable input is echoed, Backspace and Ctrl-U edit the
/// line, Enter (`\r` or `\n`) completes it. Escape sequences (arrow keys, …) are dropped, since
/// there is no cursor to move in a line that is not shown by a line editor.
#[derive(Default)]
pub struct LineInput {
    line: Vec<u8>,
    escape: Escape,
}

/// What some keystrokes did: the bytes to echo and the lines they completed (trimmed, never
/// empty).
#[derive(Debug, Default, PartialEq)]
pub struct Typed {
    pub echo: Vec<u8>,
    pub lines: Vec<String>,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Start,
    /// Inside `ESC [` or `ESC O`, until the final byte.
    Sequence,
}

impl LineInput {
    pub fn feed(&mut self, bytes: &[u8]) -> Typed {
        let mut typed = Typed::default();
        for &b in bytes {
            match self.escape {
                Escape::Start => {
                    self.escape = if b == b'[' || b == b'O' {
                        Escape::Sequence
                    } else {
                        Escape::None
                    };
                    continue;
                }
                Escape::Sequence => {
                    if (0x40..=0x7e).contains(&b) {
                        self.escape = Escape::None;
                    }
                    continue;
                }
                Escape::None => {}
            }
            match b {
                b'\r' | b'\n' => {
                    // "\r\n" from a paste is one Enter: the second completes an empty line,
                    // which is dropped, and only the first echoes.
                    let line = String::from_utf8_lossy(&self.line).trim().to_string();
                    self.line.clear();
                    if !line.is_empty() {
                        typed.lines.push(line);
                        typed.echo.extend_from_slice(b"\r\n");
                    } else if b == b'\r' {
                        typed.echo.extend_from_slice(b"\r\n");
                    }
                }
                0x7f | 0x08 => {
                    // One character, however many bytes its UTF-8 takes; on an empty line
                    // nothing (the echo would erase what the agent wrote).
                    if self.line.is_empty() {
                        continue;
                    }
                    while let Some(last) = self.line.pop() {
                        if last & 0xc0 != 0x80 {
                            break;
                        }
                    }
                    typed.echo.extend_from_slice(b"\x08 \x08");
                }
                0x15 => {
                    self.line.clear();
                    typed.echo.extend_from_slice(b"\r\x1b[2K");
                }
                0x1b => self.escape = Escape::Start,
                b'\t' => {
                    self.line.push(b' ');
                    typed.echo.push(b' ');
                }
                b if b < 0x20 => {}
                b => {
                    self.line.push(b);
                    typed.echo.push(b);
                }
            }
        }
        typed
    }
}

/// Streamed text, cleaned, each piece of a line in `colour`, with terminal line ends between
/// lines and none after the last.
fn paint_chunk(text: &str, colour: &str) -> String {
    let text = clean(text);
    let mut out = String::with_capacity(text.len() + 8);
    for (i, part) in text.split('\n').enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        if colour.is_empty() || part.is_empty() {
            out.push_str(part);
        } else {
            out.push_str(&format!("{colour}{part}{RESET}"));
        }
    }
    out
}

/// Colours each line of `text` (and puts `lead` before the first), one terminal line each.
fn paint_lines(text: &str, colour: &str, lead: &str) -> String {
    let mut out = String::new();
    for (i, line) in text.trim_end_matches('\n').split('\n').enumerate() {
        let lead = if i == 0 { lead } else { "" };
        if colour.is_empty() && lead.is_empty() {
            out.push_str(line);
        } else {
            out.push_str(&format!("{colour}{lead}{line}{RESET}"));
        }
        out.push_str("\r\n");
    }
    out
}

/// Drops escape sequences and control characters other than newline and tab; `\r\n` becomes
/// `\n` (the painters add their own line ends).
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters, then one final byte.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC (titles, clipboard, links): up to BEL or ST.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The first `max` characters of one line (newlines become spaces), with `…` if cut.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// One line of a diff as shown.
enum Op<'a> {
    Same(&'a str),
    Del(&'a str),
    Add(&'a str),
    /// Unchanged lines left out.
    Gap,
}

impl Op<'_> {
    fn is_change(&self) -> bool {
        matches!(self, Op::Del(_) | Op::Add(_))
    }
}

/// The path, then the lines of a diff; cut after [`DIFF_LINES`] lines.
fn paint_diff(path: &str, ops: &[Op]) -> String {
    let mut out = format!("{BOLD}✎ {}{RESET}\r\n", one_line(&clean(path), 200));
    if !ops.iter().any(Op::is_change) {
        out.push_str(&format!("{DIM}  (no change){RESET}\r\n"));
        return out;
    }
    // A trailing gap says nothing.
    let end = ops
        .iter()
        .rposition(|op| !matches!(op, Op::Gap))
        .map_or(0, |i| i + 1);
    for (i, op) in ops[..end].iter().enumerate() {
        if i == DIFF_LINES {
            let rest = ops[i..].iter().filter(|op| op.is_change()).count();
            if rest > 0 {
                out.push_str(&format!("{DIM}  … {rest} more changed lines{RESET}\r\n"));
            }
            return out;
        }
        let line = match op {
            Op::Same(l) => format!("{DIM}  {}{RESET}", one_line(l, MAX_COLUMNS)),
            Op::Del(l) => format!("{RED}- {}{RESET}", one_line(l, MAX_COLUMNS)),
            Op::Add(l) => format!("{GREEN}+ {}{RESET}", one_line(l, MAX_COLUMNS)),
            Op::Gap => format!("{DIM}  ⋯{RESET}"),
        };
        out.push_str(&line);
        out.push_str("\r\n");
    }
    out
}

/// A line diff: common prefix and suffix, and a longest-common-subsequence alignment of the
/// middle (or, when that would be too large to compute, the old middle removed and the new one
/// added).
fn line_diff<'a>(old: &[&'a str], new: &[&'a str]) -> Vec<Op<'a>> {
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let suffix = old[prefix..]
        .iter()
        .rev()
        .zip(new[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let (a, b) = (
        &old[prefix..old.len() - suffix],
        &new[prefix..new.len() - suffix],
    );
    let mut ops: Vec<Op<'a>> = old[..prefix].iter().map(|l| Op::Same(l)).collect();
    if a.len().saturating_mul(b.len()) > DIFF_CELLS {
        ops.extend(a.iter().map(|l| Op::Del(l)));
        ops.extend(b.iter().map(|l| Op::Add(l)));
    } else {
        // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
        let width = b.len() + 1;
        let mut lcs = vec![0u32; (a.len() + 1) * width];
        for i in (0..a.len()).rev() {
            for j in (0..b.len()).rev() {
                lcs[i * width + j] = if a[i] == b[j] {
                    lcs[(i + 1) * width + j + 1] + 1
                } else {
                    lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            if i < a.len() && j < b.len() && a[i] == b[j] {
                ops.push(Op::Same(a[i]));
                i += 1;
                j += 1;
            } else if i < a.len()
                && (j == b.len() || lcs[(i + 1) * width + j] >= lcs[i * width + j + 1])
            {
                // Removals before additions where either keeps the alignment, as diffs read.
                ops.push(Op::Del(a[i]));
                i += 1;
            } else {
                ops.push(Op::Add(b[j]));
                j += 1;
            }
        }
    }
    ops.extend(old[old.len() - suffix..].iter().map(|l| Op::Same(l)));
    ops
}

/// Rendered text without its colours, for tests that read what the terminal shows.
#[cfg(test)]
pub(crate) fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\x1b[") {
        out.push_str(&rest[..at]);
        // A control sequence ends with its first byte in `@`..=`~`.
        let after = &rest[at + 2..];
        let end = after
            .find(|c: char| ('@'..='~').contains(&c))
            .map_or(after.len(), |end| end + 1);
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_with_crlf_and_reset_their_colour() {
        let out = assistant_text("one\ntwo\n");
        assert_eq!(out, "one\r\ntwo\r\n");
        let out = error("bad\nworse");
        assert_eq!(out.matches("\r\n").count(), 2);
        for line in out.split_terminator("\r\n") {
            assert!(line.ends_with(RESET), "{line:?}");
        }
    }

    #[test]
    fn agent_text_cannot_drive_the_terminal() {
        let out =
            assistant_text("a\x1b[2Jb\x1b]52;c;aGk=\x07c\x1b]0;title\x1b\\d\x07e\u{9b}f\r\ng");
        assert_eq!(out, "abcdef\r\ng\r\n");
        assert!(!tool_result("\x1b[31mred\x1b[0m", false).contains("[31m"));
    }

    #[test]
    fn tool_calls_summarise_their_input() {
        let input: Value =
            serde_json::from_str(r#"{"command":"ls -la\necho hi","timeout":5}"#).unwrap();
        assert_eq!(input_summary(&input), "ls -la … (+1 lines)");
        let line = plain(&tool_call("Bash", &input_summary(&input)));
        assert_eq!(line, "▸ Bash ls -la … (+1 lines)\r\n");
        let argv: Value = serde_json::from_str(r#"{"command":["cargo","test","a b"]}"#).unwrap();
        assert_eq!(input_summary(&argv), "cargo test 'a b'");
        // Never raw JSON: scalar fields as key=value, nested ones left out.
        let other: Value = serde_json::from_str(r#"{"a":1,"b":"x","c":{"d":2}}"#).unwrap();
        assert_eq!(input_summary(&other), "a=1 b=x");
        let long = Value::String("x".repeat(500));
        assert_eq!(input_summary(&long).chars().count(), MAX_COLUMNS);
        // A name that already says it keeps the line short.
        assert_eq!(
            plain(&tool_call("Read README.md", "README.md")),
            "▸ Read README.md\r\n"
        );
    }

    #[test]
    fn streamed_text_keeps_the_line_open() {
        assert_eq!(text_chunk("a\r\nb\x1b[2Jc"), "a\r\nbc");
        assert_eq!(plain(&thought_chunk("hm\nso")), "hm\r\nso");
        assert_eq!(plain(&prompt("do it\nnow")), "› do it\r\nnow\r\n");
    }

    #[test]
    fn unified_diffs_are_painted_like_diffs() {
        let text = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n alpha\n-gamma\n+delta\n\
                    @@ -10,1 +10,2 @@\n ten\n+eleven\n\\ No newline at end of file\n";
        let out = plain(&unified_diff("x (modified)", text));
        let lines: Vec<&str> = out.split_terminator("\r\n").collect();
        assert_eq!(
            lines,
            [
                "✎ x (modified)",
                "  alpha",
                "- gamma",
                "+ delta",
                "  ⋯",
                "  ten",
                "+ eleven"
            ]
        );
        let later = plain(&unified_diff("y", "@@ -5,1 +5,1 @@\n-a\n+b\n"));
        assert_eq!(later, "✎ y\r\n  ⋯\r\n- a\r\n+ b\r\n");
    }

    #[test]
    fn tool_results_are_shortened() {
        let text: String = (0..20).map(|i| format!("line {i}\n")).collect();
        let out = plain(&tool_result(&text, false));
        assert!(out.starts_with("  ⎿ line 0\r\n    line 1\r\n"));
        assert!(out.contains("… 14 more lines"));
        assert!(!out.contains("line 6"));
        assert!(plain(&tool_result("", true)).contains("failed, no output"));
    }

    #[test]
    fn diffs_show_removed_and_added_lines_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
        let new = "a\nb\nc\nD\ne\nf\ng\nh\ni\nj\nK\n";
        let out = plain(&diff("src/x.rs", old, new));
        let lines: Vec<&str> = out.split_terminator("\r\n").collect();
        assert_eq!(
            lines,
            [
                "✎ src/x.rs",
                "  ⋯",
                "  b",
                "  c",
                "- d",
                "+ D",
                "  e",
                "  f",
                "  ⋯",
                "  i",
                "  j",
                "+ K"
            ]
        );
        assert!(diff("p", "x", "x").contains("(no change)"));
        let created = plain(&diff("new.txt", "", "one\ntwo"));
        assert_eq!(created, "✎ new.txt\r\n+ one\r\n+ two\r\n");
    }

    #[test]
    fn long_diffs_are_cut() {
        let new: String = (0..500).map(|i| format!("{i}\n")).collect();
        let out = plain(&diff("big", "", &new));
        assert_eq!(out.matches("\r\n+ ").count(), DIFF_LINES);
        assert!(out.contains("… 420 more changed lines"));
    }

    #[test]
    fn summary_names_the_figures_it_has() {
        let usage = UsageUpdate {
            tokens_in: Some(1200),
            tokens_out: Some(300),
            api_calls: Some(3),
            cost_usd: Some(0.01234),
        };
        assert_eq!(
            plain(&summary(true, &usage)),
            "✔ done · 1200 tokens in · 300 out · 3 API calls · $0.0123\r\n"
        );
        assert_eq!(
            plain(&summary(false, &UsageUpdate::default())),
            "✘ failed\r\n"
        );
    }

    #[test]
    fn approvals_read_as_sentences() {
        assert_eq!(
            plain(&approval_asked("command", "Bash: rm -rf target")),
            "⏸ waiting for approval (command): Bash: rm -rf target\r\n"
        );
        assert_eq!(
            plain(&approval_covered("Bash: pwd")),
            "✔ allowed for the session: Bash: pwd\r\n"
        );
        assert_eq!(
            plain(&approval_answered(&Decision::deny("no"))),
            "✘ denied: no\r\n"
        );
        let allow = Decision {
            allow: true,
            for_session: true,
            reason: None,
        };
        assert_eq!(
            plain(&approval_answered(&allow)),
            "✔ allowed for the session\r\n"
        );
    }

    #[test]
    fn typed_lines_are_echoed_edited_and_completed() {
        let mut input = LineInput::default();
        let typed = input.feed(b"helo\x7f\x7fllo wor");
        assert_eq!(typed.echo, b"helo\x08 \x08\x08 \x08llo wor");
        assert!(typed.lines.is_empty());
        let typed = input.feed(b"ld\x1b[D\r\n\r");
        assert_eq!(typed.lines, ["hello world"]);
        assert_eq!(typed.echo, b"ld\r\n\r\n");
        let typed = input.feed("née\x7f\x7f\x15ok\n".as_bytes());
        assert_eq!(typed.lines, ["ok"]);
        // Backspace on an empty line erases nothing on the screen.
        assert!(input.feed(b"\x7f").echo.is_empty());
    }
}
