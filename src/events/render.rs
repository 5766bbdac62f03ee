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
            ..
        } => {
            json!({"state": state.as_str(), "endReason": end_reason, "error": error, "runnerId": runner_id})
        }
        SessionEventData::BudgetReached(o) => json!({
            "scope": o.scope.as_str(),
            "metric": o.metric.as_str(),
            "limit": o.limit,
            "spent": o.spent,
        }),
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

/// Text for Slack's mrkdwn, at most `max` characters once escaped: `&`, `<` and `>` are markup
/// there (`<!channel>`, `<url|label>`), so they become entities, and the text is cut before the
/// escaping could take it over the limit (an entity is never cut in two).
fn slack_text(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = 0;
    for c in text.chars() {
        let piece = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            _ => "",
        };
        let width = if piece.is_empty() { 1 } else { piece.len() };
        if chars + width > max {
            out.push('…');
            break;
        }
        if piece.is_empty() {
            out.push(c);
        } else {
            out.push_str(piece);
        }
        chars += width;
    }
    out
}

/// Text for a Discord message: markdown and mentions are shown as typed (a backslash before
/// each markdown character; `@` followed by a zero-width space), so an agent's words cannot
/// ping a channel or dress a link up as another.
fn discord_text(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in clip(text, max).chars() {
        match c {
            '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '[' | ']' => {
                out.push('\\');
                out.push(c);
            }
            '@' => out.push_str("@\u{200b}"),
            _ => out.push(c),
        }
    }
    out
}

/// The command or file an approval is about, read from its context as policies read it.
fn approval_subject(
    action: crate::sessions::model::ApprovalAction,
    context_json: Option<&str>,
) -> Option<(&'static str, String)> {
    let ctx: Value = serde_json::from_str(context_json?).ok()?;
    let req = crate::policy::PolicyRequest::new(action, Some(&ctx));
    if let Some(c) = req.command {
        return Some(("Command", c.into_owned()));
    }
    if let Some(p) = req.path {
        return Some(("File", p.to_owned()));
    }
    req.tool.map(|t| ("Tool", t.to_owned()))
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
        DomainEvent::Session(SessionEventData::BudgetReached(o)) => {
            let (limit, spent) = match o.metric {
                crate::spend::model::BudgetMetric::CostUsd => {
                    (format!("${:.2}", o.limit), format!("${:.2}", o.spent))
                }
                crate::spend::model::BudgetMetric::Tokens => {
                    (format!("{} tokens", o.limit), format!("{} tokens", o.spent))
                }
            };
            format!(
                "Budget reached ({} limit {limit}, spent {spent}): session {session} paused",
                o.scope.as_str()
            )
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
        DomainEvent::Session(SessionEventData::ApprovalRequested {
            action,
            context_json,
            ..
        }) => approval_subject(*action, context_json.as_deref()),
        _ => None,
    };
    let session = event.session_id.map(|s| s.to_string());
    let repo = extras
        .repo_url
        .as_deref()
        .map(crate::sessions::model::url_without_credentials);
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
                fields.push(json!({"type": "mrkdwn", "text": format!("*{label}*\n`{}`", slack_text(value, 1_000))}));
            }
            if let Some(s) = &session {
                fields.push(json!({"type": "mrkdwn", "text": format!("*Session*\n{s}")}));
            }
            if let Some(repo) = &repo {
                fields.push(
                    json!({"type": "mrkdwn", "text": format!("*Repo*\n{}", slack_text(repo, 500))}),
                );
            }
            if let Some(org) = &event.org_id {
                fields.push(
                    json!({"type": "mrkdwn", "text": format!("*Org*\n{}", slack_text(org, 100))}),
                );
            }
            let mut blocks = vec![json!({
                "type": "section",
                "text": {"type": "mrkdwn", "text": slack_text(&headline, SLACK_TEXT_CHARS)},
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
            let mut text = slack_text(&headline, SLACK_TEXT_CHARS);
            if let Some(url) = &extras.approval_url {
                text.push_str(&format!(" — {url}"));
            }
            sorted_text(json!({"text": text, "blocks": blocks}))
        }
        TargetKind::Discord => {
            let mut lines = vec![format!("**{}**", discord_text(&headline, 600))];
            if let Some((label, value)) = &subject {
                lines.push(format!("{label}: {}", discord_text(value, 600)));
            }
            let mut place = Vec::new();
            if let Some(s) = &session {
                place.push(format!("session {s}"));
            }
            if let Some(repo) = &repo {
                place.push(format!("repo {}", discord_text(repo, 300)));
            }
            if !place.is_empty() {
                lines.push(place.join(" · "));
            }
            if let Some(url) = &extras.approval_url {
                lines.push(format!("Review and decide: {url}"));
            }
            // Nobody is pinged, whatever the text says.
            sorted_text(json!({
                "content": clip(&lines.join("\n"), DISCORD_CHARS),
                "allowed_mentions": {"parse": []},
            }))
        }
    }
}

#[cfg(test)]
mod notification_tests {
    use super::*;
    use crate::sessions::model::ApprovalAction;
    use crate::webhooks::model::TargetKind;

    fn asked(description: &str, command: &str) -> BusEvent {
        BusEvent::new(
            0,
            Some("acme".into()),
            Some(Uuid::from_u128(7)),
            DomainEvent::Session(SessionEventData::ApprovalRequested {
                approval_id: Uuid::from_u128(8),
                action: ApprovalAction::Command,
                description: description.into(),
                context_json: Some(json!({"input": {"command": command}}).to_string()),
                requested_at: 0,
                expires_at: 1,
                decided_at_once: false,
            }),
        )
    }

    fn extras() -> NotificationExtras {
        NotificationExtras {
            approval_url: Some("http://v.example/approve/vlk_x".into()),
            repo_url: Some("https://x-access-token:ghp_secret@github.com/acme/app.git".into()),
        }
    }

    #[test]
    fn slack_messages_escape_the_agents_words_and_stay_within_slacks_limits() {
        let event = asked(
            "<!channel> & <https://evil|Approve>",
            &"a && b < c ".repeat(400),
        );
        let body = notification_body(TargetKind::Slack, Uuid::nil(), &event, &extras());
        let message: Value = serde_json::from_str(&body).unwrap();
        let text = message["text"].as_str().unwrap();
        assert!(
            text.contains("&lt;!channel&gt; &amp; &lt;https://evil|Approve&gt;"),
            "{text}"
        );
        assert!(
            !body.contains("ghp_secret"),
            "credentials of the repo URL never leave"
        );
        assert!(body.contains("https://github.com/acme/app.git"), "{body}");
        for field in message["blocks"][1]["fields"].as_array().unwrap() {
            let chars = field["text"].as_str().unwrap().chars().count();
            assert!(chars <= 2_000, "a field of {chars} characters");
        }
    }

    #[test]
    fn discord_messages_ping_nobody_and_show_markdown_as_typed() {
        let event = asked("@everyone look [here](https://evil)", "rm -rf `pwd`");
        let body = notification_body(TargetKind::Discord, Uuid::nil(), &event, &extras());
        let message: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(message["allowed_mentions"], json!({"parse": []}));
        let content = message["content"].as_str().unwrap();
        assert!(!content.contains("@everyone"), "{content}");
        assert!(content.contains("\\[here\\](https://evil)"), "{content}");
        assert!(content.contains("rm -rf \\`pwd\\`"), "{content}");
        assert!(!content.contains("ghp_secret"), "{content}");
    }
}
