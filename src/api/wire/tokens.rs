//! API tokens and `GET /me`.

use serde::Serialize;
use uuid::Uuid;

use crate::auth::{IssuedToken, Principal, TokenRecord};
use crate::sessions::timestamp;

/// A token as listed (never its secret), or as just issued (with it, once).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Token<'a> {
    created_at: String,
    kind: &'static str,
    name: &'a str,
    /// Always present: `null` for a token of no org.
    org_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runner_id: Option<Uuid>,
    /// The secret, only in the answer that issues it.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    token_id: Uuid,
}

impl<'a> From<&'a TokenRecord> for Token<'a> {
    fn from(t: &'a TokenRecord) -> Self {
        Self {
            created_at: timestamp(t.created_at),
            kind: t.kind.as_str(),
            name: &t.name,
            org_id: t.org_id.as_deref(),
            revoked_at: t.revoked_at.map(timestamp),
            runner_id: t.runner_id,
            token: None,
            token_id: t.id,
        }
    }
}

impl<'a> From<&'a IssuedToken> for Token<'a> {
    fn from(issued: &'a IssuedToken) -> Self {
        Self {
            token: Some(&issued.secret),
            ..Self::from(&issued.record)
        }
    }
}

/// `GET /me`: who the calling token is.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Me<'a> {
    kind: &'static str,
    name: &'a str,
    /// Always present: `null` for a token of no org.
    org_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runner_id: Option<Uuid>,
    token_id: Uuid,
}

impl<'a> From<&'a Principal> for Me<'a> {
    fn from(p: &'a Principal) -> Self {
        Self {
            kind: p.kind.as_str(),
            name: &p.name,
            org_id: p.org_id.as_deref(),
            runner_id: p.runner_id,
            token_id: p.token_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::sorted_keys;
    use super::*;
    use crate::auth::TokenKind;

    #[test]
    fn keys_in_wire_order() {
        for full in [true, false] {
            let record = TokenRecord {
                id: Uuid::from_u128(1),
                kind: TokenKind::Runner,
                name: "r".into(),
                org_id: full.then(|| "acme".into()),
                runner_id: full.then(|| Uuid::from_u128(2)),
                hash: [0; 32],
                created_at: 0,
                revoked_at: full.then_some(1),
            };
            sorted_keys(&Token::from(&record));
            let issued = IssuedToken {
                record,
                secret: "vlg_s".into(),
            };
            sorted_keys(&Token::from(&issued));
        }
        let json = serde_json::to_string(&Me::from(&Principal::anonymous_admin())).unwrap();
        assert!(json.contains(r#""orgId":null"#), "{json}");
        sorted_keys(&Me::from(&Principal::anonymous_admin()));
    }
}
