//! A session's recording as an asciicast v2 file (the format of asciinema): a header line,
//! then one JSON array per line, `[t, "o", data]` for terminal output and `[t, "m", label]` for
//! a marker (a timeline event). `t` is seconds since the recording's origin, never less than
//! the line before's. Every string goes through serde_json.

use serde::Serialize;
use serde_json::Value;

use crate::clock::Millis;
use crate::sessions::model::{SessionEvent, url_without_credentials};
use crate::sessions::{RecordingItem, RecordingStart};

/// The terminal size the header names: sessions keep none of their own.
pub const WIDTH: u16 = 120;
pub const HEIGHT: u16 = 40;
/// The media type of an asciicast file.
pub const CONTENT_TYPE: &str = "application/x-asciicast";
/// A marker's label is cut to this many characters.
const MAX_LABEL_CHARS: usize = 200;

#[derive(Serialize)]
struct Header<'a> {
    version: u8,
    width: u16,
    height: u16,
    timestamp: i64,
    title: &'a str,
}

/// Writes the lines of one recording, keeping the time of the last line.
pub struct CastWriter {
    origin: Millis,
    last_ms: i64,
}

impl CastWriter {
    /// The writer of `start`'s recording, with its header line written to `out`.
    pub fn new(start: &RecordingStart, out: &mut Vec<u8>) -> Self {
        let s = &start.session;
        let title = format!(
            "{} · {}",
            s.provider.as_str(),
            url_without_credentials(&s.repo.url)
        );
        let header = Header {
            version: 2,
            width: WIDTH,
            height: HEIGHT,
            timestamp: start.origin.div_euclid(1000),
            title: &title,
        };
        // Cannot fail: numbers and a string into a Vec.
        let _ = serde_json::to_writer(&mut *out, &header);
        out.push(b'\n');
        Self {
            origin: start.origin,
            last_ms: 0,
        }
    }

    /// Appends `item`'s line to `out`.
    pub fn write(&mut self, item: &RecordingItem, out: &mut Vec<u8>) {
        let ms = (item.at() - self.origin).max(self.last_ms).max(0);
        self.last_ms = ms;
        let t = ms as f64 / 1000.0;
        // Cannot fail: a number and strings into a Vec.
        let _ = match item {
            RecordingItem::Output(chunk) => {
                serde_json::to_writer(&mut *out, &(t, "o", &chunk.data))
            }
            RecordingItem::Event(event) => {
                serde_json::to_writer(&mut *out, &(t, "m", marker_label(event)))
            }
        };
        out.push(b'\n');
    }
}

/// What a marker says about a timeline event: its type, then what an operator needs to know —
/// `approval_requested: <description>`, `approval_resolved: allow by <who>`,
/// `state_changed: RUNNING → PAUSED_BY_HUMAN`, `session_created: <providerId> · <repository>`
/// (without credentials), otherwise the event's summary. Approval markers start with `approval`.
pub fn marker_label(e: &SessionEvent) -> String {
    let data: Value = e
        .data_json
        .as_deref()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    let text = |key: &str| data.get(key).and_then(Value::as_str).unwrap_or_default();
    let detail = match e.kind.as_str() {
        "approval_requested" if !text("description").is_empty() => {
            let action = text("action");
            if action.is_empty() {
                text("description").to_owned()
            } else {
                format!("{} ({action})", text("description"))
            }
        }
        "approval_resolved" if !text("decision").is_empty() => {
            let mut d = format!("{} by {}", text("decision"), text("resolvedBy"));
            if text("scope") == "session" {
                d.push_str(" for the session");
            }
            if !text("reason").is_empty() {
                d.push_str(" — ");
                d.push_str(text("reason"));
            }
            d
        }
        // Its summary names the repository as given, credentials and all.
        "session_created" if !text("repoUrl").is_empty() => format!(
            "{} · {}",
            text("providerId"),
            url_without_credentials(text("repoUrl"))
        ),
        _ => e.summary.clone(),
    };
    let label = format!("{}: {detail}", e.kind);
    // One line: a description may span several.
    let mut one_line = String::with_capacity(label.len());
    for word in label.split_whitespace() {
        if !one_line.is_empty() {
            one_line.push(' ');
        }
        one_line.push_str(word);
    }
    match one_line.char_indices().nth(MAX_LABEL_CHARS) {
        Some((cut, _)) => {
            one_line.truncate(cut);
            one_line.push('…');
            one_line
        }
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, summary: &str, data: &str) -> SessionEvent {
        SessionEvent {
            seq: 1,
            kind: kind.into(),
            summary: summary.into(),
            at: 0,
            data_json: Some(data.into()),
        }
    }

    #[test]
    fn labels_name_the_event_and_what_matters() {
        assert_eq!(
            marker_label(&event(
                "approval_requested",
                "Approval requested: merge — x",
                r#"{"action":"merge","description":"Merge\nPR #12"}"#
            )),
            "approval_requested: Merge PR #12 (merge)"
        );
        assert_eq!(
            marker_label(&event(
                "approval_resolved",
                "Approval merge: allow",
                r#"{"decision":"allow","resolvedBy":"tok-1","reason":null}"#
            )),
            "approval_resolved: allow by tok-1"
        );
        assert_eq!(
            marker_label(&event(
                "state_changed",
                "RUNNING → PAUSED_BY_HUMAN",
                r#"{"from":"RUNNING","to":"PAUSED_BY_HUMAN"}"#
            )),
            "state_changed: RUNNING → PAUSED_BY_HUMAN"
        );
        assert_eq!(
            marker_label(&event(
                "session_created",
                "Session created for https://bot:pw@example.com/a.git",
                r#"{"providerId":"codex","repoUrl":"https://bot:pw@example.com/a.git"}"#
            )),
            "session_created: codex · https://example.com/a.git"
        );
        let long = marker_label(&event("session_failed", &"x".repeat(500), "{}"));
        assert_eq!(long.chars().count(), MAX_LABEL_CHARS + 1);
    }
}
