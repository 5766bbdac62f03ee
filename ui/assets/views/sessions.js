// Sessions of the chosen org: filters by state and provider (kept in the URL), pages, and
// live updates (a state change or a new session reloads the page shown). Each shows what it cost
// so far, and a session paused by its budget says so.
import { age, debounce, duration, empty, errorBox, fill, patch, h, humanize, loading, pager, table, usd } from '../dom.js';
import { PROVIDERS, SESSION_STATES, providerLabel, sessionLink, sessionStateBadge } from './parts.js';

const PAGE_SIZE = 20;

export async function mount(main, ctx) {
  const { api, org, query } = ctx;
  const state = query.get('state') || '';
  const providerId = query.get('providerId') || '';
  const page = Math.max(1, Number(query.get('page')) || 1);

  const go = (changes) => {
    const q = new URLSearchParams({ state, providerId, page: String(page), ...changes });
    for (const [k, v] of [...q]) if (!v || (k === 'page' && v === '1')) q.delete(k);
    const s = q.toString();
    ctx.navigate(`/sessions${s ? `?${s}` : ''}`, { replace: true });
  };

  const stateSelect = h('select', { id: 'filter-state', name: 'state', onchange: (e) => go({ state: e.target.value, page: '1' }) },
    h('option', { value: '' }, 'Any state'),
    SESSION_STATES.map((s) => h('option', { value: s, selected: s === state }, humanize(s))));
  const providerSelect = h('select', { id: 'filter-provider', name: 'providerId', onchange: (e) => go({ providerId: e.target.value, page: '1' }) },
    h('option', { value: '' }, 'Any provider'),
    PROVIDERS.map((p) => h('option', { value: p.id, selected: p.id === providerId }, p.label)));
  const body = h('div', null, loading('Loading sessions…'));

  fill(main,
    h('div', { class: 'page-head' },
      h('div', null, h('h1', null, 'Sessions'), h('p', { class: 'muted' }, org ? ['Agent sessions of ', h('strong', null, org), ', newest first.'] : 'Choose an org in the top bar.')),
      h('span', { class: 'spacer' }),
      h('a', { class: 'btn primary', href: '/sessions/new', id: 'new-session' }, 'New session')),
    h('section', { class: 'card' },
      h('div', { class: 'filters', role: 'group', 'aria-label': 'Filters' },
        h('div', { class: 'field' }, h('label', { for: 'filter-state' }, 'State'), stateSelect),
        h('div', { class: 'field' }, h('label', { for: 'filter-provider' }, 'Provider'), providerSelect),
        state || providerId ? h('button', { class: 'btn small', type: 'button', onclick: () => go({ state: '', providerId: '', page: '1' }) }, 'Clear filters') : null),
      body));

  async function load() {
    if (!org) {
      fill(body, empty('No org chosen.', 'Sessions belong to an org: type its id in the top bar.'));
      return;
    }
    try {
      const data = await api.get('/sessions', { orgId: org, state, providerId, page, pageSize: PAGE_SIZE });
      if (!data.items.length) {
        patch(body, state || providerId
          ? empty('No session matches these filters.', 'Clear the filters to see every session.')
          : empty('No sessions yet.', 'Create one to put an agent to work.'));
        if (data.total) body.append(pager(data, (p) => go({ page: String(p) })));
        return;
      }
      patch(body,
        h('div', { id: 'sessions-table' }, tableOf(data.items)),
        pager(data, (p) => go({ page: String(p) })));
    } catch (e) {
      fill(body, errorBox(e, 'Sessions could not be loaded'));
    }
  }

  const reload = debounce(load, 250);
  ctx.cleanup(reload.cancel);
  ctx.onFrame((f) => {
    if (f.type === 'session' || (f.type === 'event' && (f.event === 'session_created' || f.event === 'session_started' || f.event === 'budget_reached'))) reload();
  });
  ctx.onResync(load);
  await load();
}

function tableOf(items) {
  const columns = [
    { label: 'Session', cell: (s) => sessionLink(s.sessionId) },
    { label: 'State', cell: (s) => sessionStateBadge(s) },
    { label: 'Provider', cell: (s) => providerLabel(s.providerId) },
    { label: 'Repository', cell: (s) => h('span', { class: 'ellipsis mono', title: s.repoUrl }, s.repoUrl) },
    { label: 'Task', cell: (s) => h('span', { class: 'ellipsis', title: s.taskSummary || '' }, s.taskSummary || '—') },
    { label: 'Started', cell: (s) => age(s.startedAt) },
    { label: 'Duration', class: 'num', cell: (s) => duration(s.durationSeconds || 0) },
    { label: 'Cost', class: 'num', cell: (s) => h('span', { class: 'nowrap', 'data-cost-usd': s.costUsd ?? 0 }, usd(s.costUsd ?? 0)) },
  ];
  return table(columns, items, { caption: 'Sessions', rowAttrs: (s) => ({ 'data-session-id': s.sessionId, 'data-state': s.state }) });
}
