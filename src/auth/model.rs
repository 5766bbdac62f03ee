//! Token records as stored: kinds, hashed secrets, revocation.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenKind {
    Admin,
    Org,
    RunnerJoin,
    Runner,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Org => "org",
            Self::RunnerJoin => "runner_join",
            Self::Runner => "runner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Admin, Self::Org, Self::RunnerJoin, Self::Runner]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: Uuid,
    pub kind: TokenKind,
    pub name: String,
    pub org_id: Option<String>,
    /// For `runner` tokens: the runner they belong to.
    pub runner_id: Option<Uuid>,
    pub hash: [u8; 32],
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}
