// One session: its live terminal (xterm.js; scrollback replayed from the stream, typing sent
// to the runner), its recording's player (player.js), state and controls, approvals, the event
// timeline and usage.
import { fittedTerminal } from './terminal.js';
import { age, badge, confirmDialog, dateTime, debounce, duration, empty, errorBox, fill, h, patch, loading, number, time, toast, usd } from '../dom.js';
import { TERMINAL_STATES, actionLabel, approvalList, providerLabel } from './parts.js';
import { resolverLabel } from './rules.js';
import { recordingCard } from './player.js';
import { sessionStateBadge } from './parts.js';
import { raiseAndResume } from './budget.js';

export async function mount(main, ctx) {
  const { api, stream } = ctx;
  const [id] = ctx.params;
  let session;
  try {
    session = await api.get(`/sessions/${id}`);
  } catch (e) {
    fill(main, backLink(), e.code === 'SESSION_NOT_FOUND'
      ? empty('This session does not exist.', 'It may have been purged after its retention time, or it belongs to another org.')
      : errorBox(e, 'The session could not be loaded'));
    return;
  }

  const stateBadge = h('span', { id: 'session-state' });
  const controls = h('div', { class: 'row', id: 'session-controls' });
  const termHint = h('span', { class: 'small muted', id: 'terminal-hint' });
  const termBox = h('div', { class: 'term-box', id: 'terminal', role: 'region', 'aria-label': 'Terminal' });
  const pendingBox = h('div', { class: 'approval-list', id: 'session-approvals' });
  const approvalsBody = h('div', null, loading());
  const resolvedBox = h('div');
  const detailsBox = h('div');
  const usageBox = h('div');
  const timeline = h('ol', { class: 'timeline', id: 'timeline', 'aria-live': 'polite' });
  const timelineBody = h('div', null, loading());

  fill(main,
    backLink(),
    h('div', { class: 'page-head' },
      h('div', null,
        h('h1', null, 'Session ', h('span', { class: 'mono', title: id }, id.slice(0, 8)), ' ', stateBadge),
        h('p', { class: 'muted' }, providerLabel(session.providerId), ' on ', h('span', { class: 'mono' }, session.repo?.url || session.repoUrl))),
      h('span', { class: 'spacer' }),
      controls),
    h('div', { class: 'session-layout' },
      h('div', { class: 'stack' },
        h('section', { class: 'card terminal-card', 'aria-labelledby': 'terminal-title' },
          h('div', { class: 'card-head' }, h('h2', { id: 'terminal-title' }, 'Terminal'), h('span', { class: 'spacer' }), termHint),
          termBox),
        recordingCard(ctx, id),
        h('section', { class: 'card', 'aria-labelledby': 'timeline-title' },
          h('div', { class: 'card-head' }, h('h2', { id: 'timeline-title' }, 'Timeline')),
          timelineBody)),
      h('div', { class: 'stack' },
        h('section', { class: 'card', 'aria-labelledby': 'session-approvals-title' },
          h('div', { class: 'card-head' }, h('h2', { id: 'session-approvals-title' }, 'Approvals')),
          approvalsBody, resolvedBox),
        h('section', { class: 'card', 'aria-labelledby': 'usage-title' },
          h('div', { class: 'card-head' }, h('h2', { id: 'usage-title' }, 'Usage')), usageBox),
        h('section', { class: 'card', 'aria-labelledby': 'details-title' },
          h('div', { class: 'card-head' }, h('h2', { id: 'details-title' }, 'Details')), detailsBox))));

  // ---- terminal ------------------------------------------------------------------------------
  const { term, dispose: disposeTerminal } = fittedTerminal(termBox, { input: true });
  ctx.cleanup(() => {
    disposeTerminal();
  });
  let sawOutput = false;
  const unsubscribe = stream.subscribeSession(id, (frame) => {
    if (!sawOutput) {
      sawOutput = true;
      termBox.dataset.hasOutput = 'true';
    }
    term.write(frame.data);
  });
  ctx.cleanup(unsubscribe);
  term.onData((data) => {
    if (TERMINAL_STATES.has(session.state)) return;
    if (!stream.input(id, data)) toast('Not connected: what you type is not sent. Reconnecting…', 'bad');
  });

  // ---- state and controls ----------------------------------------------------------------------
  function act(label, path, body, confirmText) {
    return h('button', {
      class: ['btn', label === 'Stop' ? 'danger' : null],
      type: 'button',
      id: `session-${label.toLowerCase()}`,
      onclick: async (e) => {
        let payload = body;
        if (confirmText) {
          const reason = await confirmDialog({ title: 'Stop this session?', text: confirmText, confirm: 'Stop session', danger: true, reason: 'Reason (optional)' });
          if (reason === null) return;
          payload = reason ? { reason } : undefined;
        }
        e.target.disabled = true;
        try {
          session = await api.post(`/sessions/${id}/${path}`, payload);
          render();
          loadEvents();
        } catch (err) {
          toast(err.message, 'bad');
          e.target.disabled = false;
        }
      },
    }, label);
  }

  function render() {
    patch(stateBadge, sessionStateBadge(session));
    stateBadge.dataset.state = session.state;
    const ended = TERMINAL_STATES.has(session.state);
    patch(controls,
      session.state === 'RUNNING' ? act('Pause', 'pause') : null,
      session.state === 'PAUSED_BY_HUMAN' ? (session.pauseReason === 'budget' ? budgetPaused() : act('Resume', 'resume')) : null,
      !ended ? act('Stop', 'stop', undefined, 'The agent is told to stop and the session ends as completed. This cannot be undone.') : null);
    termHint.textContent = ended ? 'Session ended: read only' : session.state === 'RUNNING' || session.state === 'WAITING_FOR_APPROVAL' || session.state === 'PAUSED_BY_HUMAN'
      ? 'Click the terminal and type: keys go to the runner'
      : 'Waiting for a runner';
    term.options.disableStdin = ended;
    const u = session.usage || {};
    patch(usageBox, h('div', { class: 'usage' },
      stat('Tokens in', number(u.tokensIn ?? 0)), stat('Tokens out', number(u.tokensOut ?? 0)),
      stat('API calls', number(u.apiCalls ?? 0)), stat('Compute', duration(u.computeSeconds ?? 0)),
      stat('Cost', usd(u.costUsd ?? 0), 'usage-cost')));
    const env = Object.keys(session.options?.env || {});
    patch(detailsBox, h('dl', { class: 'kv' },
      kv('Org', session.orgId),
      kv('Agent', providerLabel(session.providerId)),
      kv('Repository', h('span', { class: 'mono' }, session.repo?.url)),
      kv('Branch', h('span', { class: 'mono' }, session.repo?.branch)),
      kv('Commit', h('span', { class: 'mono' }, session.repo?.commit)),
      kv('Runner', session.runnerId ? h('span', { class: 'mono', title: session.runnerId }, session.runnerId.slice(0, 8)) : 'not assigned'),
      kv('Started', h('span', { title: dateTime(session.startedAt) }, age(session.startedAt))),
      session.completedAt ? kv('Ended', h('span', { title: dateTime(session.completedAt) }, age(session.completedAt))) : null,
      kv('Duration', duration(session.durationSeconds || 0)),
      kv('Timeout', `${number(session.options?.timeoutMinutes)} min`),
      session.endReason ? kv('End reason', session.endReason) : null,
      session.error ? kv('Error', session.error) : null,
      env.length ? kv('Environment', env.join(', ')) : null,
      session.options?.requiredFeatures?.length ? kv('Features', session.options.requiredFeatures.join(', ')) : null,
      session.workspace?.path ? kv('Workspace', h('span', { class: 'mono' }, session.workspace.path)) : null,
      session.task ? kv('Task', h('span', { class: 'task' }, session.task)) : null));
  }

  /** Paused by its budget: what it spent; an admin raises the limit and resumes it. */
  function budgetPaused() {
    return [
      h('span', { class: 'small muted', id: 'pause-reason' }, `Paused: budget · spent ${usd(session.usage?.costUsd ?? 0)}`),
      ctx.isAdmin
        ? h('button', {
          class: 'btn primary', type: 'button', id: 'session-raise-resume', 'aria-haspopup': 'dialog',
          onclick: async (e) => {
            const button = e.currentTarget;
            button.disabled = true;
            if (await raiseAndResume(id, session.orgId)) reloadAll();
            button.disabled = false;
          },
        }, 'Raise and resume…')
        : act('Resume', 'resume'),
    ];
  }

  // ---- approvals -----------------------------------------------------------------------------
  const pending = new Map();
  const renderPending = approvalList(pendingBox, {
    showSession: false,
    orgId: session.orgId,
    onResolved: (approvalId) => {
      pending.delete(approvalId);
      showPending();
      reloadAll();
    },
  });
  function showPending() {
    renderPending([...pending.values()]);
    if (pending.size) {
      if (pendingBox.parentNode !== approvalsBody) fill(approvalsBody, pendingBox);
    } else {
      fill(approvalsBody, h('p', { class: 'muted small' }, 'Nothing waiting for a decision.'));
    }
  }
  async function loadApprovals() {
    try {
      const a = await api.get(`/sessions/${id}/approvals`);
      pending.clear();
      for (const p of a.pending) pending.set(p.approvalId, { ...p, sessionId: id });
      showPending();
      fill(resolvedBox, a.resolved.length
        ? [h('h3', null, 'Answered'), h('ul', { class: 'issue-list' }, a.resolved.slice().reverse().map((r) => h('li', null,
          h('span', null, badge(r.decision), ' ', actionLabel(r.action),
            r.scope === 'session' ? [' ', h('span', { class: 'badge info', 'data-scope': 'session' }, 'for the session')] : null,
            r.reason ? h('span', { class: 'muted small' }, ` — ${r.reason}`) : null),
          h('span', { class: 'muted small', 'data-resolved-by': r.resolvedBy }, `by ${resolverLabel(r.resolvedBy)} `, age(r.resolvedAt)))))]
        : null);
    } catch (e) {
      fill(approvalsBody, errorBox(e));
    }
  }

  // ---- timeline ------------------------------------------------------------------------------
  let eventsAfter = 0;
  let loadingEvents = null;
  function loadEvents() {
    loadingEvents = (loadingEvents || Promise.resolve()).then(async () => {
      try {
        for (;;) {
          const page = await api.get(`/sessions/${id}/events`, { afterSeq: eventsAfter, limit: 1000 });
          for (const ev of page.items) {
            timeline.prepend(h('li', { 'data-seq': ev.seq, 'data-type': ev.type },
              h('time', { dateTime: ev.timestamp, title: dateTime(ev.timestamp) }, time(ev.timestamp)),
              h('span', null, ev.summary, decidedBy(ev))));
          }
          eventsAfter = page.nextSeq;
          if (page.items.length < 1000) break;
        }
        if (timeline.parentNode !== timelineBody) fill(timelineBody, timeline.children.length ? timeline : h('p', { class: 'muted small' }, 'No events yet.'));
      } catch (e) {
        fill(timelineBody, errorBox(e));
      }
    });
    return loadingEvents;
  }

  async function reloadDetail() {
    try {
      session = await api.get(`/sessions/${id}`);
      render();
    } catch (e) {
      if (e.code === 'SESSION_NOT_FOUND') toast('This session was removed.', 'bad');
    }
  }
  const reloadAll = debounce(() => { reloadDetail(); loadEvents(); loadApprovals(); }, 150);
  ctx.cleanup(reloadAll.cancel);

  ctx.onFrame((f) => {
    if (f.sessionId !== id && f.data?.sessionId !== id) return;
    if (f.type === 'approval_required') {
      pending.set(f.approval.approvalId, { ...f.approval, sessionId: id });
      showPending();
      loadEvents();
    } else if (f.type === 'session' || f.type === 'event') {
      if (f.type === 'session' && f.data?.to) {
        session = { ...session, state: f.data.to };
        render();
      }
      reloadAll();
    }
  });
  ctx.onResync(reloadAll);

  render();
  await Promise.all([loadApprovals(), loadEvents()]);
}

/** Who answered, for an `approval_resolved` entry (policy rules and links answer too). */
function decidedBy(ev) {
  const by = ev.type === 'approval_resolved' ? ev.data?.resolvedBy : null;
  if (!by) return null;
  return h('span', { class: 'muted', 'data-resolved-by': by }, ` — by ${resolverLabel(by)}`);
}

function backLink() {
  return h('p', { class: 'small' }, h('a', { href: '/sessions' }, '← Sessions'));
}

function stat(label, value, id) {
  return h('div', { class: 'stat', id }, h('span', { class: 'label' }, label), h('span', { class: 'value small-value' }, value));
}

function kv(label, value) {
  return [h('dt', null, label), h('dd', null, value ?? '—')];
}
