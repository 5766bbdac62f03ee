//! The catalogue of redb tables. Every table Village has is defined here, with its key and value.
//! Values are `&[u8]` holding a version-tagged record (see `codec`). Index tables are written in
//! the same transaction as their primary table, by `store` code only.
//!
//! Ids are stored as `u128` (the UUID's bits); times as milliseconds since the epoch.

use redb::TableDefinition;

/// `key` → number. Holds `schema_version`.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// token id → `TokenRecord`.
pub const TOKENS: TableDefinition<u128, &[u8]> = TableDefinition::new("tokens-1");
/// SHA-256 of a token secret → token id. Only active tokens are present.
pub const TOKEN_HASHES: TableDefinition<&[u8], u128> = TableDefinition::new("token_hashes-1");

/// session id → `Session`.
pub const SESSIONS: TableDefinition<u128, &[u8]> = TableDefinition::new("sessions-1");
/// (org id, created ms, session id) → (). Lists an org's sessions by age.
pub const SESSIONS_BY_ORG: TableDefinition<(&str, u64, u128), ()> =
    TableDefinition::new("sessions_by_org-1");
/// org id → number of its sessions not in a terminal state (the `maxSessionsPerOrg` check).
pub const ORG_ACTIVE_SESSIONS: TableDefinition<&str, u64> =
    TableDefinition::new("org_active_sessions-1");
/// (session id, seq) → `SessionEvent`. Seq starts at 1 per session, no gaps.
pub const SESSION_EVENTS: TableDefinition<(u128, u64), &[u8]> =
    TableDefinition::new("session_events-1");
/// (session id, seq) → `OutputChunk`. Seq starts at 1 per session, no gaps.
pub const SESSION_OUTPUT: TableDefinition<(u128, u64), &[u8]> =
    TableDefinition::new("session_output-1");
/// (session id, approval id) → `Approval` (pending and resolved).
pub const APPROVALS: TableDefinition<(u128, u128), &[u8]> = TableDefinition::new("approvals-1");

/// (due ms, timer kind, session id, other id) → (). What the sweeper must do and when:
/// session timeout, approval expiry, purge of a finished session.
pub const TIMERS: TableDefinition<(u64, u8, u128, u128), ()> = TableDefinition::new("timers-1");

// ---- runners (schema version 2) -------------------------------------------------------------

/// runner id → `RunnerRecord`.
pub const RUNNERS: TableDefinition<u128, &[u8]> = TableDefinition::new("runners-1");
/// hostname → runner id. Registration is idempotent by hostname.
pub const RUNNERS_BY_HOSTNAME: TableDefinition<&str, u128> =
    TableDefinition::new("runners_by_hostname-1");
/// runner id → `Liveness` (last heartbeat, load, versions). Written in batches, not per beat.
pub const RUNNER_LIVENESS: TableDefinition<u128, &[u8]> = TableDefinition::new("runner_liveness-1");
/// (runner id, session id) → (). The non-terminal sessions assigned to a runner.
pub const SESSIONS_BY_RUNNER: TableDefinition<(u128, u128), ()> =
    TableDefinition::new("sessions_by_runner-1");
/// runner id → number of its non-terminal sessions (scheduling reads this for utilisation).
pub const RUNNER_ACTIVE_SESSIONS: TableDefinition<u128, u64> =
    TableDefinition::new("runner_active_sessions-1");
/// (created ms, session id) → (). QUEUED sessions without a runner, oldest first.
pub const SESSION_QUEUE: TableDefinition<(u64, u128), ()> = TableDefinition::new("session_queue-1");
/// (runner id, command seq) → `OutboxEntry`. Commands not yet acknowledged by the runner.
pub const RUNNER_OUTBOX: TableDefinition<(u128, u64), &[u8]> =
    TableDefinition::new("runner_outbox-1");
/// (runner id, message id) → the command's seq in `RUNNER_OUTBOX`: an ack finds its command
/// without reading the outbox (schema version 7).
pub const RUNNER_OUTBOX_BY_MESSAGE: TableDefinition<(u128, u128), u64> =
    TableDefinition::new("runner_outbox_by_message-1");

// ---- audit (schema version 3) -----------------------------------------------------------------

/// seq → `AuditEntry`. Seq starts at 1, no gaps.
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit-1");

// ---- webhooks (schema version 4) --------------------------------------------------------------

/// webhook id → `Webhook`.
pub const WEBHOOKS: TableDefinition<u128, &[u8]> = TableDefinition::new("webhooks-1");
/// (webhook id, delivery id) → `Delivery`. Delivery ids are time-ordered: oldest first.
pub const WEBHOOK_DELIVERIES: TableDefinition<(u128, u128), &[u8]> =
    TableDefinition::new("webhook_deliveries-1");
/// (next attempt ms, webhook id, delivery id) → (). Pending deliveries by due time.
pub const DELIVERY_QUEUE: TableDefinition<(u64, u128, u128), ()> =
    TableDefinition::new("delivery_queue-1");

// ---- update pipeline (schema version 5) -------------------------------------------------------

/// (provider id, version) → `VersionRecord`.
pub const VERSIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("versions-1");
/// build id → `BuildRecord`.
pub const BUILDS: TableDefinition<&str, &[u8]> = TableDefinition::new("builds-1");
/// rollout id → `Rollout` (all of them, finished ones too: they are the pipeline's history).
pub const ROLLOUTS: TableDefinition<u128, &[u8]> = TableDefinition::new("rollouts-1");
/// channel name → `ChannelRecord` (its build history and active rollout).
pub const CHANNELS: TableDefinition<&str, &[u8]> = TableDefinition::new("channels-1");
/// org id → `OrgRuntimeConfig`. Orgs without one follow `pipeline.defaultChannel`.
pub const ORG_RUNTIME_CONFIGS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("org_runtime_configs-1");

// ---- approval policies, notifications and approval links (schema version 8) ------------------

/// org id → `ApprovalPolicy`. Orgs without one ask a human about everything.
pub const APPROVAL_POLICIES: TableDefinition<&str, &[u8]> =
    TableDefinition::new("approval_policies-1");
/// org id → `OrgNotifications` (the org's notification targets).
pub const ORG_NOTIFICATIONS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("org_notifications-1");
/// SHA-256 of an approval link's secret → `ApprovalLink`. Only links still usable are kept.
pub const APPROVAL_LINKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("approval_links-1");
/// (session id, approval id, link hash) → (): the links of one approval, removed with it when
/// it is resolved.
pub const APPROVAL_LINKS_BY_APPROVAL: TableDefinition<(u128, u128, &[u8]), ()> =
    TableDefinition::new("approval_links_by_approval-1");

// ---- approvals at scale (schema version 9) -----------------------------------------------------

/// (session id, approval id) → (): the session's approvals still pending. A request, a decision
/// and a session's detail read these, not every approval the session ever asked.
pub const PENDING_APPROVALS: TableDefinition<(u128, u128), ()> =
    TableDefinition::new("pending_approvals-1");
/// session id → how many approvals the session has asked (the last one's `seq`).
pub const APPROVAL_COUNTS: TableDefinition<u128, u64> = TableDefinition::new("approval_counts-1");

// ---- budgets and spend (schema version 10) -----------------------------------------------------

/// org id → `Budget`. Orgs without one have no limits.
pub const ORG_BUDGETS: TableDefinition<&str, &[u8]> = TableDefinition::new("org_budgets-1");
/// (org id, UTC day, provider id) → `UsageTotals`: what the org's sessions of that provider
/// spent that day. Kept when sessions are purged.
pub const USAGE_BY_DAY: TableDefinition<(&str, u32, &str), &[u8]> =
    TableDefinition::new("usage_by_day-1");
/// (org id, UTC month) → `UsageTotals` of every provider: the monthly limit reads one row.
pub const USAGE_BY_MONTH: TableDefinition<(&str, u32), &[u8]> =
    TableDefinition::new("usage_by_month-1");
/// (org id, UTC month, build id) → `BuildOutcomes` of the sessions that ended that month on
/// runners of that build.
pub const BUILD_OUTCOMES: TableDefinition<(&str, u32, &str), &[u8]> =
    TableDefinition::new("build_outcomes-1");
/// session id → `BudgetHold` as a byte: sessions paused for budget, or resumed over it by an
/// admin. Absent for every other session.
pub const BUDGET_HOLDS: TableDefinition<u128, u8> = TableDefinition::new("budget_holds-1");
