//! What a new session and the data reported for it must meet. The API reads a request's shape
//! and then asks these checks, so that every bad field of a request is reported at once; the
//! limits named in the messages are the constants the domain enforces.

use std::collections::BTreeMap;

use super::model::{ApprovalScope, Decision, Repo};
use crate::error::Issue;

/// Events kept in a session detail's `recentEvents`.
pub const RECENT_EVENTS: usize = 20;
pub const MAX_TASK_BYTES: usize = 64 * 1024;
pub const MAX_OUTPUT_BYTES: usize = 256 * 1024;
pub const MAX_ENV_ENTRIES: usize = 64;
pub const MAX_PAGE_LIMIT: u64 = 1000;
/// Branch and commit names.
pub const MAX_REF_CHARS: usize = 255;
pub const MAX_URL_BYTES: usize = 2048;
pub const DEFAULT_BRANCH: &str = "main";
pub const DEFAULT_COMMIT: &str = "HEAD";
pub const MAX_APPROVAL_DESCRIPTION_BYTES: usize = 10_000;
pub const MIN_TIMEOUT_MINUTES: f64 = 1.0;
pub const MAX_TIMEOUT_MINUTES: f64 = 120.0;
/// Upper bound of a reported `computeSeconds`.
pub const MAX_COMPUTE_SECONDS: f64 = 1.0e12;
/// Upper bound of a reported `costUsd`.
pub const MAX_COST_USD: f64 = 1.0e12;

/// The repository of a new session must be one a runner can clone.
pub fn check_repo_url(url: Option<&str>, issues: &mut Vec<Issue>) {
    if url.is_some_and(|u| !is_repository_url(u)) {
        issues.push(Issue::new(
            "repo.url",
            "must be an http(s)://, ssh://, git@host:path or file:// repository URL",
        ));
    }
}

/// Branch and commit names of a new session's repository.
pub fn check_repo_refs(branch: Option<&str>, commit: Option<&str>, issues: &mut Vec<Issue>) {
    for (key, v) in [("branch", branch), ("commit", commit)] {
        if v.is_some_and(|s| s.trim().is_empty() || s.len() > MAX_REF_CHARS) {
            issues.push(Issue::new(
                format!("repo.{key}"),
                format!("must be 1 to {MAX_REF_CHARS} characters"),
            ));
        }
    }
}

/// The repository of a new session, with the default branch and commit where none is named.
pub fn repo(url: String, branch: Option<String>, commit: Option<String>) -> Repo {
    Repo {
        url,
        branch: branch.unwrap_or_else(|| DEFAULT_BRANCH.into()),
        commit: commit.unwrap_or_else(|| DEFAULT_COMMIT.into()),
    }
}

pub fn check_task(task: Option<&str>, issues: &mut Vec<Issue>) {
    if task.is_some_and(|t| t.len() > MAX_TASK_BYTES) {
        issues.push(Issue::new(
            "task",
            format!("must be at most {MAX_TASK_BYTES} bytes"),
        ));
    }
}

/// Environment variables handed to the agent: a bounded number of well-formed names.
pub fn check_env(env: &BTreeMap<String, String>, issues: &mut Vec<Issue>) {
    if env.len() > MAX_ENV_ENTRIES {
        issues.push(Issue::new(
            "options.env",
            format!("must have at most {MAX_ENV_ENTRIES} entries"),
        ));
    }
    if env
        .keys()
        .any(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        issues.push(Issue::new(
            "options.env",
            "keys must be non-empty and contain no `=`",
        ));
    }
}

/// What an approval request says it is for.
pub fn check_approval_description(description: Option<&str>, issues: &mut Vec<Issue>) {
    if description.is_some_and(|d| d.trim().is_empty() || d.len() > MAX_APPROVAL_DESCRIPTION_BYTES)
    {
        issues.push(Issue::new(
            "description",
            format!("must be 1 to {MAX_APPROVAL_DESCRIPTION_BYTES} bytes"),
        ));
    }
}

/// A decision's scope: `session` widens an `allow` only; a denial applies to the one request.
pub fn check_resolution(decision: Decision, scope: Option<ApprovalScope>, issues: &mut Vec<Issue>) {
    if decision == Decision::Deny && scope == Some(ApprovalScope::Session) {
        issues.push(Issue::new(
            "scope",
            "session applies to allow only; a deny is for this request (omit scope or use once)",
        ));
    }
}

/// A chunk of terminal output as a runner reports it.
pub fn check_output(data: &str, issues: &mut Vec<Issue>) {
    if data.len() > MAX_OUTPUT_BYTES {
        issues.push(Issue::new(
            "data",
            format!("must be at most {MAX_OUTPUT_BYTES} bytes"),
        ));
    }
}

/// A repository URL: `http(s)://…`, `ssh://…`, scp-style `git@host:path`, or `file://…`.
pub fn is_repository_url(u: &str) -> bool {
    if u.len() > MAX_URL_BYTES || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let after = |prefix: &str| u.strip_prefix(prefix).filter(|rest| !rest.is_empty());
    if let Some(rest) = after("https://")
        .or_else(|| after("http://"))
        .or_else(|| after("ssh://"))
    {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = host.rsplit('@').next().unwrap_or("");
        return !host.is_empty() && !host.starts_with(':');
    }
    if let Some(rest) = after("file://") {
        return rest.starts_with('/') && rest.len() > 1;
    }
    // scp-style `user@host:path`
    match u.split_once(':') {
        Some((user_host, path)) => match user_host.split_once('@') {
            Some((user, host)) => {
                !user.is_empty() && !host.is_empty() && !host.contains('/') && !path.is_empty()
            }
            None => false,
        },
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_urls() {
        for ok in [
            "https://github.com/acme/app.git",
            "http://git.local/x",
            "ssh://git@host/acme/app.git",
            "git@github.com:acme/app.git",
            "file:///srv/repos/app",
        ] {
            assert!(is_repository_url(ok), "{ok}");
        }
        for bad in [
            "",
            "github.com/acme/app",
            "ftp://host/x",
            "https://",
            "git@:path",
            "git@host:",
            "file://relative",
            "https://exa mple.com/x",
            "not a url",
        ] {
            assert!(!is_repository_url(bad), "{bad}");
        }
    }
}
