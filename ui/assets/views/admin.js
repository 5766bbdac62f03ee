// Admin: tokens (a new secret is shown once, with a copy button; revoke), webhooks and their
// deliveries, and the audit log.
import { age, badge, confirmDialog, dateTime, empty, errorBox, fill, patch, h, humanize, loading, pager, table, toast } from '../dom.js';

const TABS = [
  { id: 'tokens', label: 'Tokens' },
  { id: 'webhooks', label: 'Webhooks' },
  { id: 'audit', label: 'Audit log' },
];

export async function mount(main, ctx) {
  const tab = ctx.params[0] || 'tokens';
  const body = h('div');
  fill(main,
    h('div', { class: 'page-head' }, h('div', null, h('h1', null, 'Admin'), h('p', { class: 'muted' }, 'Who may call Village, who hears from it, and what was done.'))),
    h('nav', { class: 'tabs', 'aria-label': 'Admin sections' },
      TABS.map((t) => h('a', { href: `/admin/${t.id}`, 'aria-current': t.id === tab ? 'page' : null }, t.label))),
    body);
  if (tab === 'tokens') await tokens(body, ctx);
  else if (tab === 'webhooks') await webhooks(body, ctx);
  else await audit(body, ctx);
}

// ---- tokens ------------------------------------------------------------------------------------

async function tokens(root, ctx) {
  const { api, org } = ctx;
  const list = h('div', null, loading('Loading tokens…'));
  const created = h('div', { id: 'new-token', 'aria-live': 'polite' });
  const kind = h('select', { id: 'token-kind' }, [['org', 'Org — sessions and approvals of one org'], ['admin', 'Admin — everything'], ['runner_join', 'Runner join — registers runners']]
    .map(([v, l]) => h('option', { value: v }, l)));
  const name = h('input', { id: 'token-name', type: 'text', placeholder: 'e.g. acme CI', autocomplete: 'off' });
  const orgInput = h('input', { id: 'token-org', type: 'text', value: org, placeholder: 'org id', autocomplete: 'off', spellcheck: false });
  const error = h('div', { 'aria-live': 'assertive' });
  let page = 1;

  const form = h('form', {
    novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      fill(error);
      const body = { kind: kind.value, name: name.value.trim() };
      if (orgInput.value.trim()) body.orgId = orgInput.value.trim();
      try {
        const t = await api.post('/tokens', body);
        name.value = '';
        showSecret(t);
        load();
      } catch (err) {
        fill(error, errorBox(err, 'The token was not created'));
      }
    },
  },
  error,
  h('div', { class: 'form-grid' },
    h('div', { class: 'field' }, h('label', { for: 'token-kind' }, 'Kind'), kind),
    h('div', { class: 'field' }, h('label', { for: 'token-name' }, 'Name'), name),
    h('div', { class: 'field' }, h('label', { for: 'token-org' }, 'Org'), orgInput, h('span', { class: 'hint' }, 'Required for org tokens; optional for runner join tokens.'))),
  h('div', { class: 'form-actions' }, h('button', { class: 'btn primary', type: 'submit', id: 'create-token' }, 'Create token')));

  function showSecret(t) {
    const code = h('code', { id: 'token-secret' }, t.token);
    const copy = h('button', {
      class: 'btn small', type: 'button', id: 'copy-token',
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(t.token);
          copy.textContent = 'Copied';
        } catch {
          const range = document.createRange();
          range.selectNodeContents(code);
          getSelection().removeAllRanges();
          getSelection().addRange(range);
          copy.textContent = 'Selected: press Ctrl+C';
        }
      },
    }, 'Copy');
    fill(created, h('div', { class: 'alert ok', role: 'status' },
      h('p', null, h('strong', null, `Token “${t.name}” created.`), ' Copy it now: it is shown only this once.'),
      h('div', { class: 'secret' }, code, copy),
      h('button', { class: 'btn link small', type: 'button', onclick: () => fill(created) }, 'I have stored it — hide')));
    copy.focus();
  }

  async function revoke(t) {
    const ok = await confirmDialog({ title: `Revoke “${t.name}”?`, text: 'Anything using this token is refused from now on; open dashboards using it are signed out.', confirm: 'Revoke', danger: true });
    if (ok === null) return;
    try {
      await api.del(`/tokens/${t.tokenId}`);
      toast(`“${t.name}” was revoked.`);
      load();
    } catch (e) {
      toast(e.message, 'bad');
    }
  }

  async function load() {
    try {
      const data = await api.get('/tokens', { page, pageSize: 50 });
      patch(list, data.items.length ? [table([
        { label: 'Name', cell: (t) => h('strong', null, t.name) },
        { label: 'Kind', cell: (t) => humanize(t.kind) },
        { label: 'Org', cell: (t) => t.orgId || '—' },
        { label: 'Created', cell: (t) => h('span', { title: dateTime(t.createdAt) }, age(t.createdAt)) },
        { label: 'State', cell: (t) => (t.revokedAt ? badge('deny', 'Revoked') : badge('allow', t.tokenId === ctx.me.tokenId ? 'Active (you)' : 'Active')) },
        { label: 'Actions', class: 'actions', cell: (t) => (t.revokedAt ? null : h('button', { class: 'btn small danger', type: 'button', 'data-action': 'revoke', onclick: () => revoke(t) }, 'Revoke')) },
      ], data.items, { caption: 'Tokens', rowAttrs: (t) => ({ 'data-token-id': t.tokenId }) }), pager(data, (p) => { page = p; load(); })]
        : empty('No tokens.'));
    } catch (e) {
      fill(list, errorBox(e, 'Tokens could not be loaded'));
    }
  }

  fill(root,
    h('section', { class: 'card section', 'aria-labelledby': 'create-token-title' }, h('h2', { id: 'create-token-title' }, 'Create a token'), created, form),
    h('section', { class: 'card', 'aria-labelledby': 'tokens-title' }, h('h2', { id: 'tokens-title' }, 'Tokens'), list));
  await load();
}

// ---- webhooks ----------------------------------------------------------------------------------

async function webhooks(root, ctx) {
  const { api } = ctx;
  const list = h('div', null, loading('Loading webhooks…'));
  const url = h('input', { id: 'hook-url', type: 'text', placeholder: 'http://ci.example:9000/village', autocomplete: 'off', spellcheck: false });
  const events = h('input', { id: 'hook-events', type: 'text', value: '*', autocomplete: 'off' });
  const secret = h('input', { id: 'hook-secret', type: 'password', autocomplete: 'new-password' });
  const hookOrg = h('input', { id: 'hook-org', type: 'text', value: ctx.org, autocomplete: 'off', spellcheck: false });
  const error = h('div', { 'aria-live': 'assertive' });

  const form = h('form', {
    novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      fill(error);
      const body = { url: url.value.trim(), events: events.value.split(',').map((s) => s.trim()).filter(Boolean) };
      if (secret.value) body.secret = secret.value;
      if (hookOrg.value.trim()) body.orgId = hookOrg.value.trim();
      try {
        await api.post('/webhooks', body);
        url.value = '';
        secret.value = '';
        toast('Webhook added.');
        load();
      } catch (err) {
        fill(error, errorBox(err, 'The webhook was not added'));
      }
    },
  },
  error,
  h('div', { class: 'form-grid' },
    h('div', { class: 'field wide' }, h('label', { for: 'hook-url' }, 'URL'), url),
    h('div', { class: 'field' }, h('label', { for: 'hook-events' }, 'Events'), events, h('span', { class: 'hint' }, 'Comma separated, or * for all')),
    h('div', { class: 'field' }, h('label', { for: 'hook-org' }, 'Org'), hookOrg, h('span', { class: 'hint' }, 'Empty: every org')),
    h('div', { class: 'field' }, h('label', { for: 'hook-secret' }, 'Signing secret'), secret, h('span', { class: 'hint' }, 'Optional; signs each delivery (HMAC-SHA256)'))),
  h('div', { class: 'form-actions' }, h('button', { class: 'btn primary', type: 'submit', id: 'add-webhook' }, 'Add webhook')));

  async function showDeliveries(hook, box, button) {
    if (box.childElementCount) {
      fill(box);
      button.textContent = 'Deliveries';
      button.setAttribute('aria-expanded', 'false');
      return;
    }
    button.setAttribute('aria-expanded', 'true');
    button.textContent = 'Hide deliveries';
    fill(box, loading());
    try {
      const d = await api.get(`/webhooks/${hook.webhookId}/deliveries`);
      fill(box, d.items.length ? table([
        { label: 'Event', cell: (x) => x.event },
        { label: 'Status', cell: (x) => badge(x.status) },
        { label: 'Attempts', class: 'num', cell: (x) => String(x.attempts) },
        { label: 'Last answer', cell: (x) => (x.lastStatusCode ? `HTTP ${x.lastStatusCode}` : '—') },
        { label: 'Last attempt', cell: (x) => (x.lastAttemptAt ? age(x.lastAttemptAt) : '—') },
      ], d.items, { caption: `Deliveries to ${hook.url}` }) : h('p', { class: 'muted small' }, 'No deliveries yet.'));
    } catch (e) {
      fill(box, errorBox(e));
    }
  }

  async function remove(hook) {
    const ok = await confirmDialog({ title: 'Delete this webhook?', text: `${hook.url} stops receiving events.`, confirm: 'Delete', danger: true });
    if (ok === null) return;
    try {
      await api.del(`/webhooks/${hook.webhookId}`);
      toast('Webhook deleted.');
      load();
    } catch (e) {
      toast(e.message, 'bad');
    }
  }

  async function load() {
    try {
      const data = await api.get('/webhooks');
      patch(list, data.items.length
        ? h('div', { class: 'stack' }, data.items.map((hook) => {
          const box = h('div');
          const toggle = h('button', { class: 'btn small', type: 'button', 'aria-expanded': 'false', onclick: () => showDeliveries(hook, box, toggle) }, 'Deliveries');
          return h('article', { class: 'card', 'data-webhook-id': hook.webhookId },
            h('div', { class: 'card-head' },
              h('h3', { class: 'mono' }, hook.url),
              h('span', { class: 'spacer' }),
              toggle,
              h('button', { class: 'btn small danger', type: 'button', onclick: () => remove(hook) }, 'Delete')),
            h('p', { class: 'small muted' }, `Events: ${hook.events.join(', ')} · ${hook.orgId ? `org ${hook.orgId}` : 'every org'} · ${hook.hasSecret ? 'signed' : 'unsigned'} · added `, age(hook.createdAt)),
            box);
        }))
        : empty('No webhooks.', 'Add one to send events to CI, chat or monitoring.'));
    } catch (e) {
      fill(list, errorBox(e, 'Webhooks could not be loaded'));
    }
  }

  fill(root,
    h('section', { class: 'card section', 'aria-labelledby': 'add-hook-title' }, h('h2', { id: 'add-hook-title' }, 'Add a webhook'), form),
    h('section', { class: 'card', 'aria-labelledby': 'hooks-title' }, h('h2', { id: 'hooks-title' }, 'Webhooks'), list));
  await load();
}

// ---- audit -------------------------------------------------------------------------------------

async function audit(root, ctx) {
  const { api } = ctx;
  const rows = [];
  let nextSeq = 0;
  const body = h('div', null, loading('Loading the audit log…'));
  const more = h('button', { class: 'btn', type: 'button', id: 'audit-more' }, 'Load more');
  fill(root, h('section', { class: 'card', 'aria-labelledby': 'audit-title' },
    h('div', { class: 'card-head' }, h('h2', { id: 'audit-title' }, 'Audit log'), h('span', { class: 'muted small' }, 'Every state-changing call, oldest first.')),
    body));

  function render(hasMore) {
    fill(body, rows.length ? [table([
      { label: '#', class: 'num', cell: (e) => String(e.seq) },
      { label: 'When', cell: (e) => h('span', { title: dateTime(e.at) }, age(e.at)) },
      { label: 'Who', cell: (e) => h('span', null, e.actor?.name || '—', h('span', { class: 'muted small' }, ` (${e.actor?.kind || '?'})`)) },
      { label: 'Action', cell: (e) => h('code', null, e.action) },
      { label: 'Target', cell: (e) => h('span', { class: 'mono small ellipsis', title: e.target }, e.target || '—') },
      { label: 'Org', cell: (e) => e.orgId || '—' },
    ], rows, { caption: 'Audit log' }), hasMore ? h('div', { class: 'form-actions' }, more) : null] : empty('Nothing recorded yet.'));
  }

  async function loadMore() {
    more.disabled = true;
    try {
      const page = await api.get('/audit', { afterSeq: nextSeq, limit: 100 });
      rows.push(...page.items);
      nextSeq = page.nextSeq;
      render(page.items.length === 100);
    } catch (e) {
      fill(body, errorBox(e, 'The audit log could not be loaded'));
    } finally {
      more.disabled = false;
    }
  }
  more.addEventListener('click', loadMore);
  await loadMore();
}
