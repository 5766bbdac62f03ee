// Update pipeline (docs/api.md, section 7): rollouts with their stage progress and controls, builds and
// their status, provider versions, and the org's runtime config. Rollout events on the stream
// reload what they change.
import { age, badge, confirmDialog, dateTime, debounce, empty, errorBox, fill, patch, h, humanize, loading, number, pager, table, toast } from '../dom.js';
import { ACTIVE_ROLLOUT_STATES, PROVIDERS, rolloutProgress } from './parts.js';

const BUILD_STATUSES = ['testing', 'known_good', 'known_bad', 'deprecated'];
const CAN_ADVANCE = new Set(['pending', 'canary_testing', 'canary_passed', 'rolling_out']);

export async function mount(main, ctx) {
  const { api, isAdmin, org } = ctx;
  const rolloutsBox = h('div', null, loading('Loading rollouts…'));
  const startBox = h('div');
  const buildsBox = h('div', null, loading());
  const versionsBox = h('div', null, loading());
  const configBox = h('div', null, loading());
  let builds = [];
  let buildsPage = 1;

  // The pipeline may be missing on an older server: say so once instead of four errors.
  try {
    await api.get('/rollouts');
  } catch (e) {
    if (e.status === 404 && e.code === 'NOT_FOUND') {
      fill(main, h('div', { class: 'page-head' }, h('h1', null, 'Pipeline')),
        empty('The update pipeline is not available on this server.', 'Upgrade Village to manage builds and rollouts.'));
      return;
    }
  }

  fill(main,
    h('div', { class: 'page-head' }, h('div', null, h('h1', null, 'Pipeline'),
      h('p', { class: 'muted' }, 'Provider versions, runner builds and their rollout across the fleet.'))),
    h('section', { class: 'card section', 'aria-labelledby': 'rollouts-title' },
      h('div', { class: 'card-head' }, h('h2', { id: 'rollouts-title' }, 'Rollouts')),
      rolloutsBox, startBox),
    h('section', { class: 'card section', 'aria-labelledby': 'builds-title' },
      h('div', { class: 'card-head' }, h('h2', { id: 'builds-title' }, 'Builds')), buildsBox),
    h('div', { class: 'grid cols-2 section' },
      h('section', { class: 'card', 'aria-labelledby': 'versions-title' },
        h('div', { class: 'card-head' }, h('h2', { id: 'versions-title' }, 'Provider versions')), versionsBox),
      h('section', { class: 'card', 'aria-labelledby': 'config-title' },
        h('div', { class: 'card-head' }, h('h2', { id: 'config-title' }, 'Org runtime config')), configBox)));

  // ---- rollouts ------------------------------------------------------------------------------
  async function rolloutAction(r, verb) {
    let body;
    if (verb === 'cancel') {
      const reason = await confirmDialog({
        title: `Cancel the rollout of ${r.targetBuildId}?`,
        text: 'Every runner goes back to the previous build. This cannot be undone.',
        confirm: 'Cancel rollout', danger: true, reason: 'Reason', reasonRequired: false,
      });
      if (reason === null) return;
      body = { reason: reason || 'cancelled from the dashboard' };
    }
    try {
      await api.post(`/rollouts/${r.rolloutId}/${verb}`, body);
      loadRollouts();
    } catch (e) {
      toast(e.message, 'bad');
    }
  }

  function rolloutRow(r) {
    const active = ACTIVE_ROLLOUT_STATES.has(r.state);
    const button = (verb, label, cls) => h('button', { class: ['btn small', cls], type: 'button', 'data-action': verb, onclick: () => rolloutAction(r, verb) }, label);
    return h('article', { class: 'card', 'data-rollout-id': r.rolloutId, 'data-state': r.state },
      h('div', { class: 'card-head' },
        h('h3', null, r.targetBuildId),
        badge(r.state, undefined),
        h('span', { class: 'muted small' }, `${r.channel} channel`),
        h('span', { class: 'spacer' }),
        isAdmin && active ? h('span', { class: 'row' },
          CAN_ADVANCE.has(r.state) ? button('advance', 'Advance', 'primary') : null,
          r.state !== 'paused' ? button('pause', 'Pause') : button('resume', 'Resume'),
          button('cancel', 'Cancel', 'danger')) : null),
      rolloutProgress(r),
      h('p', { class: 'small muted' },
        r.previousBuildId ? `From ${r.previousBuildId} · ` : '',
        'started ', age(r.startedAt), ' · updated ', age(r.lastUpdatedAt),
        r.error ? h('span', { class: 'error' }, ` · ${r.error}`) : null));
  }

  async function loadRollouts() {
    try {
      const all = await api.get('/rollouts');
      all.sort((a, b) => (ACTIVE_ROLLOUT_STATES.has(b.state) - ACTIVE_ROLLOUT_STATES.has(a.state)) || String(b.startedAt).localeCompare(String(a.startedAt)));
      patch(rolloutsBox, all.length
        ? h('div', { class: 'stack', id: 'rollouts' }, all.slice(0, 20).map(rolloutRow))
        : empty('No rollouts yet.', isAdmin ? 'Start one below once a build is registered.' : 'Admins start rollouts.'));
    } catch (e) {
      fill(rolloutsBox, errorBox(e, 'Rollouts could not be loaded'));
    }
  }

  function renderStartForm() {
    if (!isAdmin) return;
    const eligible = builds.filter((b) => b.status !== 'known_bad');
    const buildSelect = h('select', { id: 'rollout-build', name: 'buildId' },
      eligible.length ? eligible.map((b) => h('option', { value: b.buildId }, `${b.buildId} (${humanize(b.status)})`)) : h('option', { value: '' }, 'No eligible build'));
    const channel = h('select', { id: 'rollout-channel', name: 'channel' }, ['stable', 'beta'].map((c) => h('option', { value: c }, c)));
    const stages = h('input', { id: 'rollout-stages', name: 'stages', type: 'text', placeholder: 'channel default', autocomplete: 'off' });
    const start = h('input', { id: 'rollout-start', type: 'checkbox', checked: true });
    const error = h('div', { 'aria-live': 'assertive' });
    const submit = h('button', { class: 'btn primary', type: 'submit', id: 'start-rollout', disabled: !eligible.length }, 'Start rollout');
    const form = h('form', {
      novalidate: true,
      onsubmit: async (e) => {
        e.preventDefault();
        fill(error);
        const body = { buildId: buildSelect.value, channel: channel.value, start: start.checked };
        if (stages.value.trim()) body.stages = stages.value.split(',').map((s) => Number(s.trim()));
        submit.disabled = true;
        try {
          await api.post('/rollouts', body);
          toast(`Rollout of ${body.buildId} started on ${body.channel}.`);
          loadRollouts();
        } catch (err) {
          fill(error, errorBox(err, 'The rollout was not started'));
        } finally {
          submit.disabled = false;
        }
      },
    },
    h('h3', { class: 'section-gap' }, 'Start a rollout'),
    error,
    h('div', { class: 'form-grid' },
      h('div', { class: 'field' }, h('label', { for: 'rollout-build' }, 'Build'), buildSelect),
      h('div', { class: 'field' }, h('label', { for: 'rollout-channel' }, 'Channel'), channel),
      h('div', { class: 'field' }, h('label', { for: 'rollout-stages' }, 'Stages (%)'), stages, h('span', { class: 'hint' }, 'e.g. 1, 10, 50, 100')),
      h('div', { class: 'field inline' }, start, h('label', { for: 'rollout-start' }, 'Start the canary now'))),
    h('div', { class: 'form-actions' }, submit));
    fill(startBox, form);
  }

  // ---- builds --------------------------------------------------------------------------------
  async function setStatus(b, select) {
    try {
      await api.post(`/builds/${encodeURIComponent(b.buildId)}/status`, { status: select.value });
      toast(`${b.buildId} is now ${humanize(select.value)}.`);
      loadBuilds();
    } catch (e) {
      toast(e.message, 'bad');
      select.value = b.status;
    }
  }

  async function loadBuilds() {
    try {
      const data = await api.get('/builds', { page: buildsPage, pageSize: 20 });
      builds = data.items;
      renderStartForm();
      if (!builds.length) {
        fill(buildsBox, empty('No builds registered.', 'CI registers runner builds with POST /api/v1/builds.'));
        return;
      }
      const columns = [
        { label: 'Build', cell: (b) => h('strong', { class: 'mono nowrap' }, b.buildId) },
        { label: 'Runner version', cell: (b) => h('span', { class: 'mono' }, b.runnerVersion) },
        { label: 'Built', cell: (b) => h('span', { title: dateTime(b.builtAt) }, age(b.builtAt)) },
        { label: 'Status', cell: (b) => badge(b.status) },
        { label: 'Recommendation', cell: (b) => (b.recommendation ? badge(b.recommendation) : '—') },
        { label: 'Providers', cell: (b) => h('div', { class: 'versions' }, Object.entries(b.runtimeVersions || {}).map(([p, v]) => h('code', null, `${p} ${v}`))) },
      ];
      if (isAdmin) {
        columns.push({
          label: 'Change status', class: 'actions', cell: (b) => {
            return h('select', { 'aria-label': `Status of ${b.buildId}`, 'data-build-status': b.buildId, onchange: (e) => setStatus(b, e.target) },
              BUILD_STATUSES.map((s) => h('option', { value: s, selected: s === b.status }, humanize(s))));
          },
        });
      }
      patch(buildsBox, table(columns, builds, { caption: 'Builds', rowAttrs: (b) => ({ 'data-build-id': b.buildId }) }),
        pager(data, (p) => { buildsPage = p; loadBuilds(); }));
    } catch (e) {
      fill(buildsBox, errorBox(e, 'Builds could not be loaded'));
    }
  }

  // ---- versions ------------------------------------------------------------------------------
  async function loadVersions() {
    try {
      const lists = await Promise.all(PROVIDERS.map((p) => api.get(`/providers/${p.id}/versions`, { limit: 5 }).then((v) => [p, v])));
      const rows = lists.flatMap(([p, versions]) => versions.map((v) => ({ ...v, label: p.label })));
      patch(versionsBox, rows.length
        ? table([
          { label: 'Provider', cell: (v) => v.label },
          { label: 'Version', cell: (v) => h('span', { class: 'mono' }, v.version) },
          { label: 'Released', cell: (v) => h('span', { title: dateTime(v.releasedAt) }, age(v.releasedAt)) },
          { label: 'Canary', cell: (v) => (v.canaryPassed ? badge('known_good', 'Passed') : badge('testing', 'Not yet')) },
          { label: 'Runners', class: 'num', cell: (v) => number(v.runnerCount ?? 0) },
        ], rows, { caption: 'Provider versions' })
        : empty('No versions known yet.', 'Versions appear when runners report them or an admin records one.'));
    } catch (e) {
      fill(versionsBox, errorBox(e, 'Versions could not be loaded'));
    }
  }

  // ---- runtime config ------------------------------------------------------------------------
  async function loadConfig() {
    if (!org) {
      fill(configBox, h('p', { class: 'muted' }, 'Choose an org in the top bar to see its runtime config.'));
      return;
    }
    let config;
    try {
      config = await api.get(`/orgs/${encodeURIComponent(org)}/runtime-config`);
    } catch (e) {
      fill(configBox, errorBox(e, 'The runtime config could not be loaded'));
      return;
    }
    const channel = h('select', { id: 'config-channel' }, ['stable', 'beta', 'pinned'].map((c) => h('option', { value: c, selected: c === config.channel }, c)));
    const beta = h('input', { id: 'config-beta', type: 'checkbox', checked: !!config.betaOptIn });
    const auto = h('input', { id: 'config-auto', type: 'checkbox', checked: config.autoUpgrade !== false });
    const pinned = h('input', { id: 'config-pinned', type: 'text', value: config.pinnedBuildId || '', list: 'config-builds', autocomplete: 'off' });
    const error = h('div', { 'aria-live': 'assertive' });
    const form = h('form', {
      novalidate: true,
      onsubmit: async (e) => {
        e.preventDefault();
        fill(error);
        const body = { channel: channel.value, betaOptIn: beta.checked, autoUpgrade: auto.checked };
        if (pinned.value.trim()) body.pinnedBuildId = pinned.value.trim();
        try {
          await api.put(`/orgs/${encodeURIComponent(org)}/runtime-config`, body);
          toast(`Runtime config of ${org} saved.`);
        } catch (err) {
          fill(error, errorBox(err, 'Not saved'));
        }
      },
    },
    error,
    h('div', { class: 'form-grid' },
      h('div', { class: 'field' }, h('label', { for: 'config-channel' }, 'Channel'), channel),
      h('div', { class: 'field' }, h('label', { for: 'config-pinned' }, 'Pinned build'), pinned,
        h('datalist', { id: 'config-builds' }, builds.map((b) => h('option', { value: b.buildId }))),
        h('span', { class: 'hint' }, 'Used with the pinned channel')),
      h('div', { class: 'field inline' }, beta, h('label', { for: 'config-beta' }, 'Opt in to beta')),
      h('div', { class: 'field inline' }, auto, h('label', { for: 'config-auto' }, 'Upgrade automatically'))),
    h('div', { class: 'form-actions' }, h('button', { class: 'btn primary', type: 'submit', id: 'save-config' }, 'Save'),
      h('span', { class: 'small muted' }, `Org ${org}`)));
    fill(configBox, form);
  }

  const reload = debounce(() => { loadRollouts(); loadBuilds(); }, 200);
  ctx.cleanup(reload.cancel);
  ctx.onFrame((f) => {
    if (f.type === 'event' && (/^rollout_/.test(f.event) || f.event === 'build_registered')) reload();
  });
  ctx.onResync(() => { loadRollouts(); loadBuilds(); loadVersions(); });
  await Promise.all([loadRollouts(), loadBuilds().then(loadConfig), loadVersions()]);
}
