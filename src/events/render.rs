//! The one place a domain event becomes JSON: the `data` of a session's timeline entry, the
//! frames of the dashboard stream and the body of a webhook delivery. Field names and shapes
//! are those of docs/api.md.

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::model::{BusEvent, DomainEvent, SessionEventData};
use crate::clock::format_ms;
use crate::sessions::model::OutputChunk;

/// The event's `data` object.
pub fn data(event: &DomainEvent) -> Value {
    match event {
        DomainEvent::Session(e) => session_data(e),
        DomainEvent::TerminalOutput(chunk) => {
            json!({"seq": chunk.seq, "stream": chunk.stream.as_str(), "data": chunk.data})
        }
        DomainEvent::Runner {
            runner_id,
            hostname,
            ..
        } => json!({"runnerId": runner_id, "hostname": hostname}),
        DomainEvent::Rollout { rollout: r, .. } => {
            let mut data = json!({
                "rolloutId": r.rollout_id,
                "buildId": r.build_id,
                "previousBuildId": r.previous_build_id,
                "channel": r.channel,
                "state": r.state,
                "currentStage": r.current_stage,
                "currentPercentage": r.current_percentage,
            });
            if let (Some(reason), Value::Object(m)) = (&r.reason, &mut data) {
                m.insert("reason".into(), json!(reason));
            }
            data
        }
        DomainEvent::VersionDiscovered {
            provider,
            version,
            runner_id,
        } => json!({"providerId": provider.as_str(), "version": version, "runnerId": runner_id}),
        DomainEvent::BuildRegistered {
            build_id,
            runner_version,
            runtime_versions,
        } => {
            json!({"buildId": build_id, "runnerVersion": runner_version, "runtimeVersions": runtime_versions})
        }
    }
}

fn session_data(e: &SessionEventData) -> Value {
    match e {
        SessionEventData::Created { provider, repo_url } => {
            json!({"providerId": provider.as_str(), "repoUrl": repo_url})
        }
        SessionEventData::StateChanged { from, to } => {
            json!({"from": from.as_str(), "to": to.as_str()})
        }
        SessionEventData::Started => json!({}),
        SessionEventData::Ended {
            state,
            end_reason,
            error,
            runner_id,
        } => {
            json!({"state": state.as_str(), "endReason": end_reason, "error": error, "runnerId": runner_id})
        }
        SessionEventData::ApprovalRequested {
            approval_id,
            action,
            description,
            context_json,
            requested_at,
            expires_at,
            ..
        } => json!({
            "approvalId": approval_id,
            "action": action.as_str(),
            "description": description,
            "context": context(context_json.as_deref()),
            "requestedAt": format_ms(*requested_at),
            "expiresAt": format_ms(*expires_at),
        }),
        SessionEventData::ApprovalResolved {
            approval_id,
            decision,
            reason,
            resolved_by,
            scope,
            ..
        } => {
            let mut data = json!({"approvalId": approval_id, "decision": decision.as_str(), "reason": reason, "resolvedBy": resolved_by});
            if let (Some(scope), Value::Object(m)) = (scope, &mut data) {
                m.insert("scope".into(), json!(scope.as_str()));
            }
            data
        }
        SessionEventData::Assigned {
            runner_id,
            assignment_id,
        } => json!({"runnerId": runner_id, "assignmentId": assignment_id}),
        SessionEventData::Requeued { runner_id, reason } => {
            json!({"runnerId": runner_id, "reason": reason})
        }
    }
}

/// An approval's context as the runner sent it (stored as JSON text): an object, or null.
pub fn context(json_text: Option<&str>) -> Value {
    json_text
        .and_then(|c| serde_json::from_str::<Value>(c).ok())
        .unwrap_or(Value::Null)
}

/// JSON text with every object's keys sorted. A `serde_json::Map` keeps insertion order when
/// serde_json's `preserve_order` feature is on (a dependency may turn it on for the whole
/// build), so the text written here is sorted explicitly, as the wire has always been.
fn sorted_text(mut v: Value) -> String {
    v.sort_all_objects();
    v.to_string()
}

/// The `data` of a timeline entry as stored with it.
pub fn timeline_data_json(event: &SessionEventData) -> String {
    sorted_text(session_data(event))
}

/// A frame of terminal output for the dashboard stream. Live and replayed output use this one
/// function, so a chunk's frame is the same whenever it is sent; it carries the chunk's time.
pub fn terminal_frame(session_id: Uuid, chunk: &OutputChunk) -> String {
    sorted_text(
        json!({"type": "terminal", "sessionId": session_id, "action": "output", "seq": chunk.seq,
           "stream": chunk.stream.as_str(), "data": chunk.data, "timestamp": format_ms(chunk.at)}),
    )
}

/// The dashboard frame of a session-scoped event (without its `timestamp`, which the stream
/// adds when it sends it).
pub fn session_frame(event: &BusEvent) -> Value {
    let id = event.session_id;
    let data = data(&event.event);
    match &event.event {
        DomainEvent::Session(SessionEventData::StateChanged { .. }) => {
            json!({"type": "session", "sessionId": id, "action": "state_change",
                   "data": {"from": data["from"], "to": data["to"]}})
        }
        DomainEvent::Session(SessionEventData::Ended { .. }) => {
            json!({"type": "session", "sessionId": id, "action": "completed", "data": data})
        }
        DomainEvent::Session(SessionEventData::ApprovalRequested {
            decided_at_once: false,
            ..
        }) => {
            let mut approval = data;
            approval["sessionId"] = json!(id);
            if approval.get("context").is_some_and(Value::is_null)
                && let Some(map) = approval.as_object_mut()
            {
                map.remove("context");
            }
            json!({"type": "approval_required", "sessionId": id, "approval": approval})
        }
        other => {
            let mut data = data;
            data["sessionId"] = json!(id);
            json!({"type": "event", "event": other.name(), "data": data})
        }
    }
}

/// The dashboard frame of a fleet event (runners, the update pipeline), without `timestamp`.
pub fn fleet_frame(event: &BusEvent) -> Value {
    json!({"type": "event", "event": event.name(), "data": data(&event.event)})
}

/// The body of a webhook delivery: the event with the delivery's id, signed as it is.
pub fn webhook_body(delivery_id: Uuid, event: &BusEvent) -> String {
    let mut data = data(&event.event);
    if let (Some(s), Value::Object(map)) = (event.session_id, &mut data) {
        map.entry("sessionId").or_insert(json!(s));
    }
    let mut body = Map::new();
    body.insert("id".into(), json!(delivery_id));
    body.insert("event".into(), json!(event.name()));
    body.insert("timestamp".into(), json!(format_ms(event.at)));
    body.insert("data".into(), data);
    if let Some(org) = &event.org_id {
        body.insert("orgId".into(), json!(org));
    }
    sorted_text(Value::Object(body))
}

/// What a notification adds to its event: the approval link (for `approval_requested`) and the
/// session's repository.
#[derive(Debug, Clone, Default)]
pub struct NotificationExtras {
    pub approval_url: Option<String>,
    pub repo_url: Option<String>,
}

/// Slack limits a text object to 3000 characters and Discord a message to 2000.
const SLACK_TEXT_CHARS: usize = 2_900;
const DISCORD_CHARS: usize = 1_900;

fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Slack's mrkdwn treats `&`, `<` and `>` as markup.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The command or file an approval is about, from its context.
fn approval_subject(context_json: Option<&str>) -> Option<(&'static str, String)> {
    let ctx: Value = serde_json::from_str(context_json?).ok()?;
    let input = ctx.get("input");
    let command = input.and_then(|i| i.get("command")).and_then(|c| match c {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    });
    if let Some(c) = command {
        return Some(("Command", c));
    }
    let path = input.and_then(|i| {
        i.get("path")
            .or_else(|| i.get("file_path"))
            .and_then(Value::as_str)
    });
    if let Some(p) = path {
        return Some(("File", p.to_owned()));
    }
    ctx.get("tool")
        .and_then(Value::as_str)
        .map(|t| ("Tool", t.to_owned()))
}

/// One line saying what happened, for chat messages.
fn headline(event: &BusEvent) -> String {
    let session = event.session_id.map(|s| s.to_string()).unwrap_or_default();
    match &event.event {
        DomainEvent::Session(SessionEventData::ApprovalRequested {
            action,
            description,
            ..
        }) => format!("Approval needed ({}): {description}", action.as_str()),
        DomainEvent::Session(SessionEventData::Ended {
            state,
            error,
            end_reason,
            ..
        }) => {
            let why = error.as_deref().or(end_reason.as_deref());
            match why {
                Some(why) => format!("Session {session} {}: {why}", state.as_str()),
                None => format!("Session {session} {}", state.as_str()),
            }
        }
        DomainEvent::Runner { hostname, kind, .. } => {
            format!("Runner {hostname}: {}", kind.name().replace('_', " "))
        }
        other => match event.session_id {
            Some(s) => format!("{} (session {s})", other.name().replace('_', " ")),
            None => other.name().replace('_', " "),
        },
    }
}

/// A notification's body as its target wants it: Slack incoming-webhook JSON (`text` and
/// blocks), Discord (`content`), or the webhook delivery body (`generic`) with `approvalUrl`.
pub fn notification_body(
    kind: crate::webhooks::model::TargetKind,
    delivery_id: Uuid,
    event: &BusEvent,
    extras: &NotificationExtras,
) -> String {
    use crate::webhooks::model::TargetKind;
    let headline = headline(event);
    let subject = match &event.event {
        DomainEvent::Session(SessionEventData::ApprovalRequested { context_json, .. }) => {
            approval_subject(context_json.as_deref())
        }
        _ => None,
    };
    let session = event.session_id.map(|s| s.to_string());
    match kind {
        TargetKind::Generic => {
            let body = webhook_body(delivery_id, event);
            match (&extras.approval_url, serde_json::from_str::<Value>(&body)) {
                (Some(url), Ok(Value::Object(mut map))) => {
                    map.insert("approvalUrl".into(), json!(url));
                    sorted_text(Value::Object(map))
                }
                _ => body,
            }
        }
        TargetKind::Slack => {
            let mut fields = Vec::new();
            if let Some((label, value)) = &subject {
                fields.push(json!({"type": "mrkdwn", "text": format!("*{label}*\n`{}`", slack_escape(&clip(value, 1_000)))}));
            }
            if let Some(s) = &session {
                fields.push(json!({"type": "mrkdwn", "text": format!("*Session*\n{s}")}));
            }
            if let Some(repo) = &extras.repo_url {
                fields.push(json!({"type": "mrkdwn", "text": format!("*Repo*\n{}", slack_escape(&clip(repo, 500)))}));
            }
            if let Some(org) = &event.org_id {
                fields.push(
                    json!({"type": "mrkdwn", "text": format!("*Org*\n{}", slack_escape(org))}),
                );
            }
            let mut blocks = vec![json!({
                "type": "section",
                "text": {"type": "mrkdwn", "text": slack_escape(&clip(&headline, SLACK_TEXT_CHARS))},
            })];
            if !fields.is_empty() {
                blocks.push(json!({"type": "section", "fields": fields}));
            }
            if let Some(url) = &extras.approval_url {
                blocks.push(json!({
                    "type": "actions",
                    "elements": [{
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Review and decide"},
                        "style": "primary",
                        "url": url,
                    }],
                }));
            }
            let mut text = clip(&headline, SLACK_TEXT_CHARS);
            if let Some(url) = &extras.approval_url {
                text.push_str(&format!(" — {url}"));
            }
            sorted_text(json!({"text": text, "blocks": blocks}))
        }
        TargetKind::Discord => {
            let mut lines = vec![format!("**{}**", clip(&headline, 600))];
            if let Some((label, value)) = &subject {
                lines.push(format!("{label}: `{}`", clip(value, 600).replace('`', "'")));
            }
            let mut place = Vec::new();
            if let Some(s) = &session {
                place.push(format!("session {s}"));
            }
            if let Some(repo) = &extras.repo_url {
                place.push(format!("repo {}", clip(repo, 300)));
            }
            if !place.is_empty() {
                lines.push(place.join(" · "));
            }
            if let Some(url) = &extras.approval_url {
                lines.push(format!("Review and decide: {url}"));
            }
            sorted_text(json!({"content": clip(&lines.join("\n"), DISCORD_CHARS)}))
        }
    }
}
