//! Approval policies, notification targets and approval links.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::sessions::ApprovalRequest;
use super::stored_json;
use crate::policy::model::{ApprovalPolicy, PolicyExample, PolicyRule};
use crate::sessions::LinkedApproval;
use crate::webhooks::model::{NotificationTarget, OrgNotifications};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy<'a> {
    default_decision: &'static str,
    rules: Vec<Rule<'a>>,
}

#[derive(Debug, Serialize)]
pub struct Rule<'a> {
    actions: Vec<&'static str>,
    decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    examples: Option<Examples>,
    id: &'a str,
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    matches: Option<Match<'a>>,
}

#[derive(Debug, Serialize)]
pub struct Match<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool: Option<&'a str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Examples {
    #[serde(rename = "match")]
    matches: Vec<Example>,
    not_match: Vec<Example>,
}

#[derive(Debug, Serialize)]
pub struct Example {
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<Value>,
}

impl From<&PolicyExample> for Example {
    fn from(e: &PolicyExample) -> Self {
        Self {
            action: e.action.as_str(),
            context: stored_json(e.context_json.as_deref()),
        }
    }
}

impl<'a> From<&'a PolicyRule> for Rule<'a> {
    fn from(r: &'a PolicyRule) -> Self {
        let any_glob = r.tool.is_some() || r.command.is_some() || r.path.is_some();
        Self {
            actions: match &r.actions {
                None => vec!["*"],
                Some(actions) => actions.iter().map(|a| a.as_str()).collect(),
            },
            decision: r.decision.as_str(),
            examples: r.examples.as_ref().map(|e| Examples {
                matches: e.matches.iter().map(Example::from).collect(),
                not_match: e.not_matches.iter().map(Example::from).collect(),
            }),
            id: &r.id,
            matches: any_glob.then_some(Match {
                command: r.command.as_deref(),
                path: r.path.as_deref(),
                tool: r.tool.as_deref(),
            }),
        }
    }
}

impl<'a> From<&'a ApprovalPolicy> for Policy<'a> {
    fn from(p: &'a ApprovalPolicy) -> Self {
        Self {
            default_decision: p.default_decision.as_str(),
            rules: p.rules.iter().map(Rule::from).collect(),
        }
    }
}

/// The answer of a dry run.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    pub decision: &'static str,
    /// Absent when the default decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Notifications<'a> {
    targets: Vec<Target<'a>>,
}

#[derive(Debug, Serialize)]
pub struct Target<'a> {
    events: &'a [String],
    id: &'a str,
    kind: &'static str,
    url: &'a str,
}

impl<'a> From<&'a NotificationTarget> for Target<'a> {
    fn from(t: &'a NotificationTarget) -> Self {
        Self {
            events: &t.events,
            id: &t.id,
            kind: t.kind.as_str(),
            url: &t.url,
        }
    }
}

impl<'a> Notifications<'a> {
    pub fn new(n: Option<&'a OrgNotifications>) -> Self {
        Self {
            targets: n
                .map(|n| n.targets.iter().map(Target::from).collect())
                .unwrap_or_default(),
        }
    }
}

/// What an approval link's page shows.
#[derive(Debug, Serialize)]
pub struct LinkView<'a> {
    approval: ApprovalRequest<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runner: Option<LinkRunner<'a>>,
    session: LinkSession<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkRunner<'a> {
    hostname: &'a str,
    runner_id: Uuid,
}

#[derive(Debug, Serialize)]
pub struct LinkRepo<'a> {
    branch: &'a str,
    /// Without credentials: the page needs no sign-in.
    url: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkSession<'a> {
    org_id: &'a str,
    provider: &'static str,
    repo: LinkRepo<'a>,
    session_id: Uuid,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<&'a str>,
}

impl<'a> From<&'a LinkedApproval> for LinkView<'a> {
    fn from(l: &'a LinkedApproval) -> Self {
        let s = &l.session;
        Self {
            approval: ApprovalRequest::from(&l.approval),
            runner: match (s.runner_id, l.runner_hostname.as_deref()) {
                (Some(runner_id), Some(hostname)) => Some(LinkRunner {
                    hostname,
                    runner_id,
                }),
                _ => None,
            },
            session: LinkSession {
                org_id: &s.org_id,
                provider: s.provider.as_str(),
                repo: LinkRepo {
                    branch: &s.repo.branch,
                    url: crate::sessions::model::url_without_credentials(&s.repo.url),
                },
                session_id: s.id,
                state: s.state.as_str(),
                task: s.task.as_deref(),
            },
        }
    }
}
