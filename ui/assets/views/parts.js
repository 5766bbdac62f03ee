// Pieces shown on more than one page: approval cards (with what an agent asks), rollout
// progress, session links.
import { api } from '../api.js';
import { age, badge, h, number, shortId } from '../dom.js';
import { ACTION_LABEL, actionLabel, allowAlwaysDialog } from './rules.js';

export { ACTION_LABEL, actionLabel };

export const SESSION_STATES = ['CREATED', 'QUEUED', 'RUNNING', 'WAITING_FOR_APPROVAL', 'PAUSED_BY_HUMAN', 'COMPLETED', 'FAILED', 'TIMED_OUT'];
export const TERMINAL_STATES = new Set(['COMPLETED', 'FAILED', 'TIMED_OUT']);
export const PROVIDERS = [
  { id: 'claude_code', label: 'Claude Code' },
  { id: 'codex', label: 'Codex CLI' },
  { id: 'gemini_cli', label: 'Gemini CLI' },
  { id: 'omnara', label: 'Omnara' },
];
export const ACTIVE_ROLLOUT_STATES = new Set(['pending', 'canary_testing', 'canary_passed', 'rolling_out', 'paused']);

export function providerLabel(id) {
  return PROVIDERS.find((p) => p.id === id)?.label || id;
}

/** A session's state as a badge; a session paused by its budget says so ("Paused: budget"). */
export function sessionStateBadge(s) {
  if (s?.state === 'PAUSED_BY_HUMAN' && s.pauseReason === 'budget') {
    const el = badge(s.state, 'Paused: budget');
    el.dataset.pauseReason = 'budget';
    return el;
  }
  return badge(s?.state);
}

export function sessionLink(id, text) {
  return h('a', { href: `/sessions/${id}`, class: 'mono', title: id }, text || shortId(id));
}

/** A word of a command line as a shell would need it written. */
function shellWord(w) {
  return /^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replaceAll("'", "'\\''")}'`;
}

/** One value of an agent's tool input: text as it is, a command as a command line, else JSON. */
function inputValue(key, v) {
  if (typeof v === 'string') return h('pre', { class: 'mono' }, v);
  if (/^(command|cmd|argv)$/i.test(key) && Array.isArray(v) && v.every((w) => typeof w === 'string')) {
    return h('pre', { class: 'mono' }, v.map(shellWord).join(' '));
  }
  return h('pre', { class: 'mono' }, JSON.stringify(v, null, 2));
}

/**
 * What the agent asks to do, from the context a runner attaches to an agent's own permission
 * request (`{tool, input, agent: {protocol, options?}}`): the tool, and its input field by field.
 * Nothing for a context of another shape (it stays readable under "Raw context").
 */
export function requestView(context) {
  if (!context || typeof context !== 'object' || Array.isArray(context)) return null;
  const tool = typeof context.tool === 'string' && context.tool ? context.tool : null;
  const input = context.input;
  const hasInput = input !== undefined && input !== null && !(typeof input === 'object' && !Array.isArray(input) && !Object.keys(input).length);
  if (!tool && !hasInput) return null;
  const protocol = typeof context.agent?.protocol === 'string' ? context.agent.protocol : null;
  let inputBox = null;
  if (hasInput) {
    inputBox = typeof input === 'object' && !Array.isArray(input)
      ? h('dl', { class: 'kv ask-input', 'data-field': 'input' },
        Object.entries(input).map(([k, v]) => [h('dt', null, k), h('dd', null, inputValue(k, v))]))
      : h('div', { class: 'ask-input', 'data-field': 'input' }, inputValue('', input));
  }
  return h('div', { class: 'ask' },
    tool ? h('div', { class: 'ask-tool' },
      h('span', { class: 'label' }, 'Tool'), ' ',
      h('code', { 'data-field': 'tool' }, tool),
      protocol ? h('span', { class: 'muted small' }, ` · asked through ${protocol}`) : null) : null,
    inputBox);
}

/**
 * A pending approval that can be answered in place: allow (this request), allow for the rest of
 * the session (the runner then allows the same action and tool without asking), allow always
 * (a policy rule for requests like it, then this one allowed), or deny.
 * `onResolved(approvalId)` runs once it is answered (here or elsewhere). `orgId` is the org of
 * the approval's session, for the policy rule (looked up when not given).
 */
export function approvalCard(approval, { showSession = true, onResolved, orgId } = {}) {
  const reasonId = `reason-${approval.approvalId}`;
  const reason = h('input', { id: reasonId, type: 'text', name: 'reason', placeholder: 'Reason (optional)', autocomplete: 'off', maxLength: 1000 });
  const error = h('div', { class: 'error', role: 'alert' });
  const tool = typeof approval.context?.tool === 'string' ? approval.context.tool : null;
  const allow = h('button', { class: 'btn ok small', type: 'button', 'data-decision': 'allow' }, 'Allow');
  const allowSession = h('button', {
    class: 'btn small allow-session', type: 'button', 'data-decision': 'allow', 'data-scope': 'session',
    title: `Allow this and, for the rest of this session, every request to ${actionLabel(approval.action).toLowerCase()}${tool ? ` with ${tool}` : ''} without asking`,
  }, 'Allow for this session');
  const allowAlways = h('button', {
    class: 'btn small allow-always', type: 'button', 'data-action': 'allow-always', 'aria-haspopup': 'dialog',
    title: 'Add a policy rule that allows requests like this one without asking, then allow this one',
  }, 'Allow always like this…');
  const deny = h('button', { class: 'btn danger small', type: 'button', 'data-decision': 'deny' }, 'Deny');
  const buttons = [allow, allowSession, allowAlways, deny];
  const hasContext = approval.context !== undefined && approval.context !== null
    && !(typeof approval.context === 'object' && !Object.keys(approval.context).length);
  const card = h('article', { class: 'approval', 'data-approval-id': approval.approvalId, 'data-action': approval.action, 'aria-label': `Approval: ${approval.description}` },
    h('div', { class: 'what' },
      badge('WAITING_FOR_APPROVAL', actionLabel(approval.action)),
      h('span', { class: 'desc' }, approval.description),
    ),
    requestView(approval.context),
    h('div', { class: 'meta' },
      showSession ? ['Session ', sessionLink(approval.sessionId), ' · '] : null,
      'asked ', age(approval.requestedAt),
      approval.expiresAt ? [' · expires ', age(approval.expiresAt)] : null),
    hasContext
      ? h('details', null, h('summary', { class: 'small' }, 'Raw context'), h('pre', { class: 'mono small' }, JSON.stringify(approval.context, null, 2)))
      : null,
    h('div', { class: 'decide' },
      h('label', { for: reasonId, class: 'sr-only' }, 'Reason'),
      reason, ...buttons),
    error);
  const decide = async (decision, scope, fallbackReason) => {
    for (const b of buttons) b.disabled = true;
    error.textContent = '';
    const body = { decision };
    if (scope) body.scope = scope;
    const why = reason.value.trim() || fallbackReason;
    if (why) body.reason = why;
    try {
      await api.post(`/sessions/${approval.sessionId}/approvals/${approval.approvalId}/resolve`, body);
      card.dataset.resolved = decision;
      onResolved?.(approval.approvalId, decision);
    } catch (e) {
      if (e.code === 'APPROVAL_ALREADY_RESOLVED') {
        error.textContent = 'This approval was already answered (by someone else, or it expired).';
        setTimeout(() => onResolved?.(approval.approvalId, null), 1500);
        return;
      }
      error.textContent = e.message;
      for (const b of buttons) b.disabled = false;
    }
  };
  allow.addEventListener('click', () => decide('allow'));
  allowSession.addEventListener('click', () => decide('allow', 'session'));
  deny.addEventListener('click', () => decide('deny'));
  allowAlways.addEventListener('click', async () => {
    const saved = await allowAlwaysDialog(approval, { orgId });
    if (saved) decide('allow', undefined, `allowed always: policy rule ${saved.rule.id}`);
  });
  return card;
}

/**
 * Keeps a list of approval cards in step with a set of approvals without rebuilding cards that
 * stay (a reason being typed survives live updates).
 */
export function approvalList(container, options) {
  const cards = new Map();
  return function render(approvals) {
    const wanted = new Set(approvals.map((a) => a.approvalId));
    for (const [id, card] of cards) {
      if (!wanted.has(id)) {
        card.remove();
        cards.delete(id);
      }
    }
    const sorted = [...approvals].sort((a, b) => String(a.requestedAt).localeCompare(String(b.requestedAt)));
    sorted.forEach((a, i) => {
      let card = cards.get(a.approvalId);
      if (!card) {
        card = approvalCard(a, options);
        cards.set(a.approvalId, card);
      }
      if (container.children[i] !== card) container.insertBefore(card, container.children[i] || null);
    });
  };
}

/** The stages of a rollout as a bar, and how many runners have converged. */
export function rolloutProgress(r) {
  const stages = r.stages || [];
  const current = r.currentPercentage ?? 0;
  const done = r.state === 'completed';
  return h('div', { class: 'rollout-progress' },
    h('div', { class: 'stages', role: 'img', 'aria-label': `Stage ${current}% of ${stages.join(', ')}%` },
      stages.map((s) => h('div', {
        class: ['stage', (done || s < current) && 'done', !done && s === current && current > 0 && 'current'],
        title: `${s}%`,
      }, `${s}%`))),
    h('div', { class: 'small muted' },
      `At ${current}% · ${number(r.runnersConverged ?? 0)} of ${number(r.runnersTargeted ?? 0)} targeted runners converged`,
      r.affectedOrgsCount !== undefined ? ` · ${number(r.affectedOrgsCount)} orgs` : ''));
}
