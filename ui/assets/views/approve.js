// The approval link page (`/approve/<linkToken>`), opened from a notification, often on a phone:
// what the agent asks, in which session and on which runner, and Allow / Deny. No sign-in: the
// link is the credential, so every call goes without the stored token, and the link token is
// never kept (not in storage, not in the history beyond this page's own address).
import { request } from '../api.js';
import { age, badge, errorBox, fill, h, tickAges } from '../dom.js';
import { providerLabel, requestView } from './parts.js';
import { actionLabel } from './rules.js';

const INVALID = 'This link is no longer valid — it was used, the request expired, or it never existed.';

export function mount(root, linkToken) {
  const path = `/approval-links/${encodeURIComponent(linkToken)}`;
  const call = (method, body) => request(method, path, body, { anonymous: true });
  const main = h('main', { id: 'main', class: 'approve-card card', tabindex: -1 });
  document.title = 'Approval request · Village';
  root.removeAttribute('aria-busy');
  fill(root, h('div', { class: 'approve-page' }, main));
  setInterval(() => tickAges(main), 1000);
  const head = h('div', { class: 'approve-brand' },
    h('img', { src: document.querySelector('link[rel="icon"]').getAttribute('href'), alt: '' }), 'Village');

  function ready() {
    main.dataset.ready = 'approve';
    performance.mark('village:ready:approve');
  }

  function result(kind, title, text) {
    return h('div', { id: 'approve-result', class: ['approve-result', kind], 'data-result': kind, role: 'status' },
      h('strong', null, title), text ? h('span', null, text) : null);
  }

  function invalid() {
    fill(main, head, result('invalid', 'Nothing to answer here', INVALID));
  }

  async function load() {
    fill(main, head, h('div', { class: 'loading', role: 'status' }, 'Loading the request…'));
    let view;
    try {
      view = await call('GET');
    } catch (e) {
      if (e.status === 404) invalid();
      else fill(main, head, errorBox(e, 'The request could not be loaded'), h('button', { class: 'btn', type: 'button', onclick: load }, 'Try again'));
      ready();
      return;
    }
    show(view);
    ready();
  }

  function show({ approval, session, runner }) {
    const reason = h('input', { id: 'approve-reason', type: 'text', name: 'reason', placeholder: 'Reason (optional)', autocomplete: 'off', maxLength: 1000 });
    const allow = h('button', { class: 'btn ok', type: 'button', id: 'approve-allow', 'data-decision': 'allow' }, 'Allow');
    const deny = h('button', { class: 'btn danger', type: 'button', id: 'approve-deny', 'data-decision': 'deny' }, 'Deny');
    const outcome = h('div', { 'aria-live': 'polite' });
    const answered = Boolean(approval.decision) || (approval.status && approval.status !== 'pending');
    const context = approval.context;
    const detailed = requestView(context);
    const rawContext = !detailed && context !== undefined && context !== null
      && !(typeof context === 'object' && !Object.keys(context).length);
    const repo = session?.repo || {};

    const decide = async (decision) => {
      allow.disabled = true;
      deny.disabled = true;
      fill(outcome);
      const body = { decision };
      if (reason.value.trim()) body.reason = reason.value.trim();
      try {
        await call('POST', body);
        fill(decisionBox, decision === 'allow'
          ? result('allowed', 'Allowed — the agent continues.', 'You can close this page.')
          : result('denied', 'Denied.', 'The agent is told not to go ahead. You can close this page.'));
        decisionBox.scrollIntoView({ block: 'nearest' });
      } catch (e) {
        if (e.status === 404) {
          fill(decisionBox, result('invalid', 'Not answered', INVALID));
          return;
        }
        fill(outcome, errorBox(e, 'The answer was not recorded'));
        allow.disabled = false;
        deny.disabled = false;
      }
    };
    allow.addEventListener('click', () => decide('allow'));
    deny.addEventListener('click', () => decide('deny'));

    const decisionBox = h('div', { class: 'approve-decide' },
      answered
        ? result('invalid', 'Already answered', INVALID)
        : [
          h('label', { for: 'approve-reason', class: 'sr-only' }, 'Reason'),
          reason,
          h('div', { class: 'approve-buttons' }, allow, deny),
          outcome,
        ]);

    fill(main,
      head,
      h('p', { class: 'muted small approve-kicker' }, 'An agent asks for approval'),
      h('div', { class: 'what' }, badge('WAITING_FOR_APPROVAL', actionLabel(approval.action))),
      h('h1', { class: 'approve-desc', id: 'approve-description' }, approval.description),
      detailed ? h('div', { class: 'approve-ask' }, detailed) : null,
      rawContext ? h('pre', { class: 'mono small approve-raw' }, JSON.stringify(context, null, 2)) : null,
      h('dl', { class: 'kv approve-facts', id: 'approve-session' },
        fact('Repository', repo.url ? h('span', { class: 'mono' }, repo.url, repo.branch ? ` (${repo.branch})` : '') : null, 'repo'),
        session?.task ? fact('Task', h('span', { class: 'task' }, session.task), 'task') : null,
        fact('Agent', providerLabel(session?.provider || session?.providerId) || null, 'provider'),
        fact('Org', session?.orgId, 'org'),
        fact('Asked by', runner?.hostname ? h('span', { class: 'mono' }, runner.hostname) : 'a runner', 'runner'),
        fact('Asked', age(approval.requestedAt)),
        approval.expiresAt ? fact('Expires', age(approval.expiresAt)) : null),
      decisionBox);
  }

  load();
}

function fact(label, value, key) {
  return [h('dt', null, label), h('dd', { 'data-fact': key }, value ?? '—')];
}
