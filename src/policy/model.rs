//! An org's approval policy as stored: ordered rules that decide an agent's request before a
//! human is asked.

use serde::{Deserialize, Serialize};

use crate::sessions::model::ApprovalAction;

/// Most rules a policy may hold: evaluation walks them in order on every approval request.
pub const MAX_RULES: usize = 200;
/// Most examples one rule may carry (match and notMatch together).
pub const MAX_EXAMPLES_PER_RULE: usize = 50;
/// Longest glob a rule may hold.
pub const MAX_GLOB_CHARS: usize = 1_000;

/// What a policy (or one of its rules) decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyDecision {
    /// The request is allowed at once.
    Allow,
    /// A human is asked (the approval stays pending).
    Ask,
    /// The request is denied at once.
    Deny,
}

impl PolicyDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Ask => "ask",
            Self::Deny => "deny",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allow" => Some(Self::Allow),
            "ask" => Some(Self::Ask),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }
}

/// An approval request as a rule sees it, kept with a rule to show (and check) what it means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyExample {
    pub action: ApprovalAction,
    /// The request's context as JSON text (the disk codec is not self-describing).
    pub context_json: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRule {
    pub id: String,
    /// The actions the rule is about; `None` for every action (`["*"]` on the wire).
    pub actions: Option<Vec<ApprovalAction>>,
    /// Globs over the request's tool, command and path; an absent one fits anything.
    pub tool: Option<String>,
    pub command: Option<String>,
    pub path: Option<String>,
    pub decision: PolicyDecision,
    /// `None` when the rule was saved without examples.
    pub examples: Option<PolicyExamples>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PolicyExamples {
    /// Requests this rule must fit.
    pub matches: Vec<PolicyExample>,
    /// Requests this rule must not fit.
    pub not_matches: Vec<PolicyExample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalPolicy {
    pub rules: Vec<PolicyRule>,
    /// What decides when no rule fits.
    pub default_decision: PolicyDecision,
}

impl Default for ApprovalPolicy {
    /// An org without a saved policy asks a human about everything.
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            default_decision: PolicyDecision::Ask,
        }
    }
}
