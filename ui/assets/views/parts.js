// Pieces shown on more than one page: approval cards, rollout progress, session links.
import { api } from '../api.js';
import { age, badge, h, humanize, number, shortId } from '../dom.js';

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

export function sessionLink(id, text) {
  return h('a', { href: `/sessions/${id}`, class: 'mono', title: id }, text || shortId(id));
}

const ACTION_LABEL = { merge: 'Merge', deps_add: 'Add dependency', secrets: 'Use secrets', deploy: 'Deploy' };

/**
 * A pending approval that can be answered in place. `onResolved(approvalId)` runs once it is
 * answered (here or elsewhere).
 */
export function approvalCard(approval, { showSession = true, onResolved } = {}) {
  const reasonId = `reason-${approval.approvalId}`;
  const reason = h('input', { id: reasonId, type: 'text', name: 'reason', placeholder: 'Reason (optional)', autocomplete: 'off', maxLength: 1000 });
  const error = h('div', { class: 'error', role: 'alert' });
  const allow = h('button', { class: 'btn ok small', type: 'button', 'data-decision': 'allow' }, 'Allow');
  const deny = h('button', { class: 'btn danger small', type: 'button', 'data-decision': 'deny' }, 'Deny');
  const card = h('article', { class: 'approval', 'data-approval-id': approval.approvalId, 'aria-label': `Approval: ${approval.description}` },
    h('div', { class: 'what' },
      badge('WAITING_FOR_APPROVAL', ACTION_LABEL[approval.action] || humanize(approval.action)),
      h('span', { class: 'desc' }, approval.description),
    ),
    h('div', { class: 'meta' },
      showSession ? ['Session ', sessionLink(approval.sessionId), ' · '] : null,
      'asked ', age(approval.requestedAt),
      approval.expiresAt ? [' · expires ', age(approval.expiresAt)] : null),
    approval.context && Object.keys(approval.context).length
      ? h('details', null, h('summary', { class: 'small' }, 'Context'), h('pre', { class: 'mono small' }, JSON.stringify(approval.context, null, 2)))
      : null,
    h('div', { class: 'decide' },
      h('label', { for: reasonId, class: 'sr-only' }, 'Reason'),
      reason, allow, deny),
    error);
  const decide = async (decision) => {
    allow.disabled = deny.disabled = true;
    error.textContent = '';
    const body = { decision };
    if (reason.value.trim()) body.reason = reason.value.trim();
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
      allow.disabled = deny.disabled = false;
    }
  };
  allow.addEventListener('click', () => decide('allow'));
  deny.addEventListener('click', () => decide('deny'));
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
