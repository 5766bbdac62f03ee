// Overview: what needs a human now (pending approvals first, answerable here; sessions paused
// by their budget, raised and resumed here by admins; failed sessions; offline runners), then the state of sessions, fleet and rollouts. Everything follows the
// stream: approvals appear from their `approval_required` frame, the rest reloads on events.
import { age, badge, debounce, empty, errorBox, fill, patch, h, humanize, loading, meter, number, toast, usd } from '../dom.js';
import { ACTIVE_ROLLOUT_STATES, SESSION_STATES, approvalList, rolloutProgress, sessionLink } from './parts.js';
import { askPermission, notificationState } from '../notify.js';
import { budgetPath, limitText, raiseAndResume, stoppedBy, tokensOf, usagePath } from './budget.js';

export async function mount(main, ctx) {
  const { api, org } = ctx;
  const approvalsBox = h('div', { class: 'approval-list', id: 'pending-approvals' });
  const approvalsBody = h('div', null, loading('Loading approvals…'));
  const approvalsCount = h('span', { class: 'badge warn', id: 'approvals-count' }, '…');
  // Approvals asked while this tab is in the background become browser notifications (see
  // notify.js), once the browser allows them.
  const notifyButton = h('button', {
    class: 'btn small', type: 'button', id: 'enable-notifications', hidden: notificationState() !== 'default',
    title: 'Show a browser notification when an agent asks for approval while this tab is in the background',
    onclick: async () => {
      const state = await askPermission({ force: true });
      notifyButton.hidden = state !== 'default';
      if (state === 'denied') toast('Notifications are blocked for this site; the browser\'s site settings can allow them.', 'bad');
    },
  }, 'Enable notifications');
  const budgetBox = h('div', { id: 'budget-paused' }, loading());
  const failedBox = h('div', null, loading());
  const offlineBox = h('div', null, loading());
  const statesBox = h('div', null, loading());
  const capacityBox = h('div', null, loading());
  const runnersBox = h('div', null, loading());
  const rolloutsBox = h('div', null, loading());

  fill(main,
    h('div', { class: 'page-head' },
      h('div', null, h('h1', null, 'Overview'),
        h('p', { class: 'muted' }, org ? ['What needs you now in ', h('strong', null, org), ', and how the fleet is doing.'] : 'How the fleet is doing.'))),
    !org ? h('div', { class: 'alert info', role: 'status' }, 'Choose an org in the top bar to see its sessions and answer its approvals.') : null,
    h('div', { class: 'attention' },
      h('section', { class: 'card', 'aria-labelledby': 'approvals-title' },
        h('div', { class: 'card-head' }, h('h2', { id: 'approvals-title' }, 'Pending approvals'), approvalsCount, h('span', { class: 'spacer' }), notifyButton),
        approvalsBody),
      h('section', { class: 'card', 'aria-labelledby': 'attention-title' },
        h('div', { class: 'card-head' }, h('h2', { id: 'attention-title' }, 'Needs attention')),
        h('h3', null, 'Paused for budget'), budgetBox,
        h('h3', { class: 'section-gap' }, 'Failed sessions'), failedBox,
        h('h3', { class: 'section-gap' }, 'Offline runners'), offlineBox)),
    h('div', { class: 'grid overview-stats section' },
      h('section', { class: 'card', 'aria-labelledby': 'states-title' },
        h('div', { class: 'card-head' }, h('h2', { id: 'states-title' }, 'Sessions by state'),
          h('span', { class: 'muted small' }, ctx.isAdmin ? 'all orgs' : org),
          h('span', { class: 'spacer' }), h('a', { href: '/sessions', class: 'small' }, 'All sessions')),
        statesBox),
      h('section', { class: 'card', 'aria-labelledby': 'capacity-title' },
        h('div', { class: 'card-head' }, h('h2', { id: 'capacity-title' }, 'Fleet capacity')),
        capacityBox),
      h('section', { class: 'card', 'aria-labelledby': 'runners-title' },
        h('div', { class: 'card-head' }, h('h2', { id: 'runners-title' }, 'Runners'), h('span', { class: 'spacer' }), h('a', { href: '/runners', class: 'small' }, 'All runners')),
        runnersBox)),
    h('section', { class: 'card', 'aria-labelledby': 'rollouts-title' },
      h('div', { class: 'card-head' }, h('h2', { id: 'rollouts-title' }, 'Active rollouts'), h('span', { class: 'spacer' }), h('a', { href: '/pipeline', class: 'small' }, 'Pipeline')),
      rolloutsBox));

  // The first click on the overview asks for notifications, once per browser (a prompt needs a
  // click to answer to).
  const askOnce = async () => {
    const state = await askPermission();
    notifyButton.hidden = state !== 'default';
  };
  main.addEventListener('click', askOnce, { once: true });
  ctx.cleanup(() => main.removeEventListener('click', askOnce));

  // ---- approvals ---------------------------------------------------------------------------
  const pending = new Map();
  const renderCards = approvalList(approvalsBox, { orgId: org, onResolved: (id) => { pending.delete(id); showApprovals(); } });
  function showApprovals() {
    approvalsCount.textContent = String(pending.size);
    approvalsCount.className = pending.size ? 'badge warn' : 'badge';
    renderCards([...pending.values()]);
    if (pending.size) {
      if (approvalsBox.parentNode !== approvalsBody) fill(approvalsBody, approvalsBox);
    } else {
      fill(approvalsBody, empty('Nothing is waiting for you.', org ? 'Approvals that agents ask for appear here the moment they ask.' : 'Choose an org to see its approvals.'));
    }
  }
  async function loadApprovals() {
    if (!org) return showApprovals();
    try {
      const waiting = await api.get('/sessions', { orgId: org, state: 'WAITING_FOR_APPROVAL', pageSize: 100 });
      const details = await Promise.all(waiting.items.map((s) => api.get(`/sessions/${s.sessionId}`).catch(() => null)));
      const fresh = new Map();
      for (const d of details) {
        for (const a of d?.pendingApprovals || []) fresh.set(a.approvalId, { ...a, sessionId: d.sessionId });
      }
      // Keep any that arrived on the stream while this was loading.
      for (const [id, a] of pending) if (!fresh.has(id) && a.live) fresh.set(id, a);
      pending.clear();
      for (const [id, a] of fresh) pending.set(id, a);
      showApprovals();
    } catch (e) {
      fill(approvalsBody, errorBox(e, 'Approvals could not be loaded'));
    }
  }

  // ---- sessions paused by their budget --------------------------------------------------------
  async function loadBudgetPaused() {
    if (!org) return fill(budgetBox, h('p', { class: 'muted small' }, 'Choose an org.'));
    try {
      const paused = await api.get('/sessions', { orgId: org, state: 'PAUSED_BY_HUMAN', pageSize: 100 });
      const items = paused.items.filter((s) => s.pauseReason === 'budget');
      if (!items.length) {
        patch(budgetBox, h('p', { class: 'muted small' }, 'No session is paused for budget.'));
        return;
      }
      // Which limit stopped each one: its usage against the budget (and the month's spend).
      const [details, budget] = await Promise.all([
        Promise.all(items.map((s) => api.get(`/sessions/${s.sessionId}`).catch(() => null))),
        api.get(budgetPath(org)).catch(() => null),
      ]);
      const month = typeof budget?.monthlyUsd === 'number' ? await api.get(usagePath(org)).catch(() => null) : null;
      patch(budgetBox, h('ul', { class: 'issue-list budget-list' }, items.map((s, i) => {
        const detail = details[i] || s;
        const stop = budget ? stoppedBy(detail, budget, month?.costUsd) : null;
        const spent = detail.usage?.costUsd ?? s.costUsd ?? 0;
        return h('li', { 'data-session-id': s.sessionId },
          h('span', null, sessionLink(s.sessionId), ' ', h('span', { class: 'muted small' }, s.taskSummary || s.repoUrl)),
          h('span', { class: 'row' },
            h('span', { class: 'small', 'data-spent': spent },
              `spent ${usd(spent)}`,
              stop?.key === 'sessionTokens' ? ` · ${number(tokensOf(detail.usage))} tokens` : '',
              stop ? h('span', { class: 'muted' }, ` · ${stop.key === 'monthlyUsd' ? 'monthly budget' : 'session cap'} ${limitText(stop.key, stop.limit)}`) : null),
            ctx.isAdmin
              ? h('button', {
                class: 'btn small primary', type: 'button', 'data-action': 'raise-resume', 'aria-haspopup': 'dialog',
                title: stop ? 'Raise the limit that stopped this session, then resume it' : 'No limit holds it back any more: resume it',
                onclick: async (e) => {
                  const button = e.currentTarget;
                  button.disabled = true;
                  const resumed = await raiseAndResume(s.sessionId, org);
                  button.disabled = false;
                  if (resumed) loadBudgetPaused();
                },
              }, stop ? 'Raise and resume…' : 'Resume')
              : null));
      })),
      ctx.isAdmin ? null : h('p', { class: 'small muted' }, 'An admin can raise the budget and resume them.'));
    } catch (e) {
      fill(budgetBox, errorBox(e));
    }
  }

  // ---- failed sessions and offline runners ---------------------------------------------------
  async function loadFailed() {
    if (!org) return fill(failedBox, h('p', { class: 'muted small' }, 'Choose an org.'));
    try {
      const [failed, timedOut] = await Promise.all([
        api.get('/sessions', { orgId: org, state: 'FAILED', pageSize: 5 }),
        api.get('/sessions', { orgId: org, state: 'TIMED_OUT', pageSize: 5 }),
      ]);
      const items = [...failed.items, ...timedOut.items].sort((a, b) => b.startedAt.localeCompare(a.startedAt)).slice(0, 5);
      const total = failed.total + timedOut.total;
      patch(failedBox, items.length
        ? [h('ul', { class: 'issue-list' }, items.map((s) => h('li', null,
          h('span', null, sessionLink(s.sessionId), ' ', h('span', { class: 'muted small' }, s.taskSummary || s.repoUrl)),
          h('span', null, badge(s.state), ' ', h('span', { class: 'small muted' }, age(s.completedAt || s.startedAt)))))),
        total > items.length ? h('a', { href: '/sessions?state=FAILED', class: 'small' }, `All ${total} failed sessions`) : null]
        : h('p', { class: 'muted small' }, 'No failed sessions.'));
    } catch (e) {
      fill(failedBox, errorBox(e));
    }
  }
  async function loadOffline() {
    try {
      const page = await api.get('/runners', { status: 'offline', pageSize: 10 });
      patch(offlineBox, page.items.length
        ? h('ul', { class: 'issue-list' }, page.items.map((r) => h('li', null,
          h('span', null, h('strong', null, r.hostname), ' ', h('span', { class: 'muted small' }, r.orgId || 'shared')),
          h('span', { class: 'small muted' }, 'last heartbeat ', age(r.lastHeartbeat)))))
        : h('p', { class: 'muted small' }, 'Every runner is reporting.'));
    } catch (e) {
      fill(offlineBox, errorBox(e));
    }
  }

  // ---- fleet ---------------------------------------------------------------------------------
  async function loadFleet() {
    try {
      const f = await api.get('/fleet');
      const counts = f.sessionsByState || {};
      patch(statesBox, h('div', { class: 'state-counts', id: 'state-counts' }, SESSION_STATES.map((s) => h('a', {
        href: `/sessions?state=${s}`, 'data-state': s,
      }, h('span', { class: 'n' }, number(counts[s] ?? 0)), h('span', { class: 's' }, humanize(s))))));
      const cap = f.capacity || { total: 0, used: 0, available: 0 };
      patch(capacityBox,
        h('div', { class: 'stat' },
          h('span', { class: 'value', id: 'capacity-used' }, `${number(cap.used)} / ${number(cap.total)}`),
          h('span', { class: 'sub' }, 'session slots in use')),
        meter(cap.total ? (cap.used / cap.total) * 100 : 0, 'Capacity used', { big: true }),
        h('p', { class: 'small muted' }, `${number(cap.available)} slots free on online runners.`));
      patch(runnersBox, h('div', { class: 'grid cols-3 runner-stats' },
        [['online', f.online], ['offline', f.offline], ['draining', f.draining]].map(([k, n]) => h('div', { class: 'stat', 'data-runners': k },
          h('span', { class: 'label' }, humanize(k)), h('span', { class: 'value' }, number(n))))));
    } catch (e) {
      fill(statesBox, errorBox(e));
      fill(capacityBox);
      fill(runnersBox);
    }
  }

  // ---- rollouts ------------------------------------------------------------------------------
  async function loadRollouts() {
    try {
      const all = await api.get('/rollouts');
      const active = all.filter((r) => ACTIVE_ROLLOUT_STATES.has(r.state));
      patch(rolloutsBox, active.length
        ? h('div', { class: 'stack' }, active.map((r) => h('div', { 'data-rollout-id': r.rolloutId },
          h('div', { class: 'row' }, h('strong', null, r.targetBuildId), badge(r.state), h('span', { class: 'muted small' }, `${r.channel} channel · started `, age(r.startedAt))),
          rolloutProgress(r))))
        : empty('No rollout in progress.', 'Start one from the pipeline page.'));
    } catch (e) {
      fill(rolloutsBox, e.status === 404 && e.code === 'NOT_FOUND'
        ? h('p', { class: 'muted small' }, 'The update pipeline is not available on this server.')
        : errorBox(e));
    }
  }

  const reloadSessions = debounce(() => { loadFailed(); loadFleet(); loadBudgetPaused(); }, 250);
  const reloadApprovals = debounce(loadApprovals, 250);
  const reloadFleet = debounce(() => { loadFleet(); loadOffline(); }, 250);
  const reloadRollouts = debounce(loadRollouts, 250);
  ctx.cleanup(() => [reloadSessions, reloadApprovals, reloadFleet, reloadRollouts].forEach((d) => d.cancel()));

  ctx.onFrame((f) => {
    if (f.type === 'approval_required') {
      pending.set(f.approval.approvalId, { ...f.approval, sessionId: f.sessionId, live: true });
      showApprovals();
    } else if (f.type === 'event' && f.event === 'approval_resolved') {
      pending.delete(f.data?.approvalId);
      showApprovals();
    } else if (f.type === 'session') {
      reloadSessions();
      if (f.data?.from === 'WAITING_FOR_APPROVAL' || f.data?.to === 'WAITING_FOR_APPROVAL' || f.action === 'completed') reloadApprovals();
    } else if (f.type === 'event' && /^runner_/.test(f.event)) {
      reloadFleet();
    } else if (f.type === 'event' && /^rollout_/.test(f.event)) {
      reloadRollouts();
    } else if (f.type === 'event' && (f.event === 'session_created' || f.event === 'budget_reached')) {
      reloadSessions();
    }
  });
  ctx.onResync(() => { loadApprovals(); loadBudgetPaused(); loadFailed(); loadOffline(); loadFleet(); loadRollouts(); });

  await Promise.all([loadApprovals(), loadBudgetPaused(), loadFailed(), loadOffline(), loadFleet(), loadRollouts()]);
}
