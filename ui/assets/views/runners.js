// Runners: status, load, sessions against capacity, provider versions and build, heartbeat
// age (ticking locally); admins drain, undrain and deregister (with confirmation).
import { age, badge, confirmDialog, debounce, empty, errorBox, fill, patch, h, humanize, loading, meter, number, pager, table, toast } from '../dom.js';

const PAGE_SIZE = 50;

export async function mount(main, ctx) {
  const { api, isAdmin, query } = ctx;
  const status = query.get('status') || '';
  const page = Math.max(1, Number(query.get('page')) || 1);
  const go = (changes) => {
    const q = new URLSearchParams({ status, page: String(page), ...changes });
    for (const [k, v] of [...q]) if (!v || (k === 'page' && v === '1')) q.delete(k);
    const s = q.toString();
    ctx.navigate(`/runners${s ? `?${s}` : ''}`, { replace: true });
  };
  const statusSelect = h('select', { id: 'filter-status', onchange: (e) => go({ status: e.target.value, page: '1' }) },
    h('option', { value: '' }, 'Any status'),
    ['online', 'offline', 'draining'].map((s) => h('option', { value: s, selected: s === status }, humanize(s))));
  const body = h('div', null, loading('Loading runners…'));
  fill(main,
    h('div', { class: 'page-head' }, h('div', null, h('h1', null, 'Runners'),
      h('p', { class: 'muted' }, isAdmin ? 'Every runner host, by hostname.' : 'The runners of your org (read only).'))),
    h('section', { class: 'card' },
      h('div', { class: 'filters' }, h('div', { class: 'field' }, h('label', { for: 'filter-status' }, 'Status'), statusSelect)),
      body));

  async function drain(r) {
    const undo = r.status === 'draining';
    try {
      await api.post(`/runners/${r.runnerId}/${undo ? 'undrain' : 'drain'}`);
      toast(undo ? `${r.hostname} takes new sessions again.` : `${r.hostname} is draining: it gets no new sessions.`);
      load();
    } catch (e) {
      toast(e.message, 'bad');
    }
  }

  async function deregister(r) {
    const ok = await confirmDialog({
      title: `Deregister ${r.hostname}?`,
      text: 'The runner is removed from the fleet and its token stops working. It must register again to come back.',
      confirm: 'Deregister',
      danger: true,
    });
    if (ok === null) return;
    try {
      await api.del(`/runners/${r.runnerId}`);
      toast(`${r.hostname} was deregistered.`);
      load();
    } catch (e) {
      if (e.code !== 'RUNNER_HAS_ACTIVE_SESSIONS') return toast(e.message, 'bad');
      const force = await confirmDialog({
        title: `${r.hostname} is running sessions`,
        text: `${e.message} Deregistering it anyway ends them as failed (runner_deregistered).`,
        confirm: 'End its sessions and deregister',
        danger: true,
      });
      if (force === null) return;
      try {
        await api.del(`/runners/${r.runnerId}`, { force: true });
        toast(`${r.hostname} was deregistered; its sessions ended.`);
        load();
      } catch (e2) {
        toast(e2.message, 'bad');
      }
    }
  }

  async function load() {
    try {
      const data = await api.get('/runners', { status, page, pageSize: PAGE_SIZE });
      if (!data.items.length) {
        patch(body, status ? empty(`No ${status} runners.`, 'Clear the filter to see every runner.')
          : empty('No runners yet.', 'Runners join with a runner_join token: POST /api/v1/runners/register.'));
        return;
      }
      const columns = [
        { label: 'Runner', cell: (r) => h('div', null, h('strong', { class: 'nowrap' }, r.hostname), h('div', { class: 'small muted' }, r.orgId ? `org ${r.orgId}` : 'shared')) },
        { label: 'Status', cell: (r) => badge(r.status) },
        { label: 'Load', cell: (r) => h('div', { class: 'load-cell' },
          h('div', { class: 'load-row' }, h('span', { class: 'lbl' }, 'CPU'), meter(r.load?.cpuPercent, `CPU of ${r.hostname}`)),
          h('div', { class: 'load-row' }, h('span', { class: 'lbl' }, 'Mem'), meter(r.load?.memoryPercent, `Memory of ${r.hostname}`))) },
        { label: 'Sessions', class: 'num', cell: (r) => `${number(r.load?.activeSessions ?? 0)} / ${number(r.capabilities?.maxConcurrentSessions)}` },
        { label: 'Providers', cell: (r) => h('div', { class: 'versions' }, (r.capabilities?.providers || []).map((p) => h('code', null, r.runtimeVersions?.[p] ? `${p} ${r.runtimeVersions[p]}` : p))) },
        { label: 'Build', cell: (r) => h('span', { class: 'mono small nowrap' }, r.buildId || '—') },
        { label: 'Heartbeat', cell: (r) => age(r.lastHeartbeat) },
      ];
      if (isAdmin) {
        columns.push({
          label: 'Actions', class: 'actions', cell: (r) => h('span', { class: 'row' },
            h('button', { class: 'btn small', type: 'button', 'data-action': r.status === 'draining' ? 'undrain' : 'drain', onclick: () => drain(r) }, r.status === 'draining' ? 'Undrain' : 'Drain'),
            h('button', { class: 'btn small danger', type: 'button', 'data-action': 'deregister', onclick: () => deregister(r) }, 'Deregister')),
        });
      }
      patch(body, h('div', { id: 'runners-table' }, table(columns, data.items, { caption: 'Runners', rowAttrs: (r) => ({ 'data-runner-id': r.runnerId, 'data-hostname': r.hostname, 'data-status': r.status }) })),
        pager(data, (p) => go({ page: String(p) })));
    } catch (e) {
      fill(body, errorBox(e, 'Runners could not be loaded'));
    }
  }

  const reload = debounce(load, 250);
  ctx.cleanup(reload.cancel);
  ctx.onFrame((f) => {
    if (f.type === 'event' && /^runner_/.test(f.event)) reload();
    if (f.type === 'session' || (f.type === 'event' && f.event === 'session_started')) reload();
  });
  ctx.onResync(load);
  await load();
}
