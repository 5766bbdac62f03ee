// Small DOM helpers. Every piece of text goes in as a text node (never innerHTML), so nothing
// the server or a runner sends can become markup.

const ATTRIBUTE_ONLY = new Set(['for', 'role', 'list', 'form']);

/** Creates an element: `h('button', {class: 'btn', onclick}, 'Save')`. */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null) continue;
      // `false` clears a property (spellcheck, disabled…); as an attribute it means "leave out".
      if (value === false && !(key in el && !key.startsWith('on'))) continue;
      if (key === 'class') el.className = Array.isArray(value) ? value.filter(Boolean).join(' ') : value;
      else if (key === 'style') for (const [p, v] of Object.entries(value)) el.style.setProperty(p, v);
      else if (key === 'dataset') Object.assign(el.dataset, value);
      else if (key.startsWith('on') && typeof value === 'function') on(el, key.slice(2), value);
      else if (key.startsWith('aria-') || key.startsWith('data-') || ATTRIBUTE_ONLY.has(key)) el.setAttribute(key, value === true ? 'true' : String(value));
      else if (key in el) el[key] = value;
      else el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// Handlers set through `h` go through one listener per event type that calls the element's
// current handler, so `patch` can keep an element and swap in the handler of its new version.
function on(el, type, fn) {
  if (!el.__on) el.__on = {};
  if (!(type in el.__on)) el.addEventListener(type, (e) => el.__on[type]?.(e));
  el.__on[type] = fn;
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/**
 * Makes the children of `el` look like `children` while keeping the elements that are still
 * there: a control that did not change stays the same element (a click, a focus or a selection
 * on it survives a live update). Elements are matched by key (`id`, `data-key` or a
 * `data-…-id`), otherwise by position when tag and key agree.
 */
export function patch(el, ...children) {
  const next = [];
  append({ append: (n) => next.push(n) }, children);
  patchChildren(el, next);
  return el;
}

function keyOf(node) {
  if (node.nodeType !== Node.ELEMENT_NODE) return null;
  if (node.id) return `#${node.id}`;
  for (const attr of node.attributes) {
    if (attr.name === 'data-key' || /^data-[a-z]+-id$/.test(attr.name)) return `${attr.name}=${attr.value}`;
  }
  return null;
}

function sameKind(a, b) {
  return a.nodeType === b.nodeType && a.nodeName === b.nodeName && keyOf(a) === keyOf(b);
}

function patchChildren(el, next) {
  const keyed = new Map();
  for (const child of el.childNodes) {
    const key = keyOf(child);
    if (key) keyed.set(key, child);
  }
  next.forEach((want, i) => {
    const key = keyOf(want);
    let have = key ? keyed.get(key) : el.childNodes[i];
    if (key) keyed.delete(key);
    if (have && have !== want && sameKind(have, want)) morph(have, want);
    else have = want;
    if (el.childNodes[i] !== have) el.insertBefore(have, el.childNodes[i] || null);
  });
  while (el.childNodes.length > next.length) el.lastChild.remove();
}

function morph(have, want) {
  if (have.nodeType !== Node.ELEMENT_NODE) {
    if (have.nodeValue !== want.nodeValue) have.nodeValue = want.nodeValue;
    return;
  }
  for (const attr of [...have.attributes]) {
    if (!want.hasAttribute(attr.name)) have.removeAttribute(attr.name);
  }
  for (const attr of want.attributes) {
    if (have.getAttribute(attr.name) !== attr.value) have.setAttribute(attr.name, attr.value);
  }
  // Properties that attributes do not carry; what a user is typing is left alone.
  if ('value' in want && have !== document.activeElement && have.value !== want.value) have.value = want.value;
  if ('checked' in want && have.checked !== want.checked) have.checked = want.checked;
  if ('disabled' in want && have.disabled !== want.disabled) have.disabled = want.disabled;
  for (const [type, fn] of Object.entries(want.__on || {})) on(have, type, fn);
  for (const type of Object.keys(have.__on || {})) if (!want.__on || !(type in want.__on)) have.__on[type] = undefined;
  patchChildren(have, [...want.childNodes]);
}

export function loading(text = 'Loading…') {
  return h('div', { class: 'loading', role: 'status' }, text);
}

export function empty(title, text) {
  return h('div', { class: 'empty' }, h('strong', null, title), text ? h('span', null, text) : null);
}

/** An error shown in words, with the API's issues when there are some. */
export function errorBox(err, prefix) {
  const message = err?.message || String(err);
  const issues = err?.issues || [];
  return h('div', { class: 'alert bad', role: 'alert' },
    prefix ? `${prefix}: ${message}` : message,
    issues.length ? h('ul', null, issues.map((i) => h('li', null, i.path ? `${i.path}: ${i.message}` : i.message))) : null);
}

// ---- formatting ------------------------------------------------------------------------------

export function shortId(id) {
  return id ? String(id).slice(0, 8) : '—';
}

export function ago(ts, now = Date.now()) {
  if (!ts) return '—';
  const s = Math.round((now - Date.parse(ts)) / 1000);
  if (Number.isNaN(s)) return '—';
  if (s < 0) return `in ${duration(-s)}`;
  if (s < 5) return 'just now';
  return `${duration(s)} ago`;
}

export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60 ? `${s % 60} s` : ''}`.trim();
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function dateTime(ts) {
  if (!ts) return '—';
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? ts : d.toLocaleString();
}

export function time(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? ts : d.toLocaleTimeString();
}

/** `<time>` showing a relative age, refreshed by `tickAges`. */
export function age(ts) {
  return h('time', { dateTime: ts || '', title: dateTime(ts), 'data-age': ts || '' }, ago(ts));
}

/** Updates every relative age under `root` (a local clock, not a server call). */
export function tickAges(root) {
  const now = Date.now();
  for (const el of root.querySelectorAll('time[data-age]')) {
    const text = ago(el.dataset.age, now);
    if (el.textContent !== text) el.textContent = text;
  }
}

export function number(n) {
  return typeof n === 'number' ? n.toLocaleString() : '—';
}

/** US dollars: cents, or down to a hundredth of a cent below one dollar. */
export function usd(n) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return '—';
  return n.toLocaleString(undefined, { style: 'currency', currency: 'USD', minimumFractionDigits: 2, maximumFractionDigits: n > 0 && n < 1 ? 4 : 2 });
}

export function percent(n) {
  return typeof n === 'number' ? `${Math.round(n)}%` : '—';
}

// ---- widgets ---------------------------------------------------------------------------------

const STATE_TONE = {
  CREATED: '', QUEUED: 'info', RUNNING: 'ok', WAITING_FOR_APPROVAL: 'warn', PAUSED_BY_HUMAN: 'warn',
  COMPLETED: '', FAILED: 'bad', TIMED_OUT: 'bad',
  online: 'ok', offline: 'bad', draining: 'warn', maintenance: 'warn',
  pending: 'info', canary_testing: 'info', canary_passed: 'ok', canary_failed: 'bad', rolling_out: 'info',
  paused: 'warn', completed: 'ok', rolled_back: 'bad',
  testing: 'info', known_good: 'ok', known_bad: 'bad', deprecated: '',
  recommended: 'ok', acceptable: 'info', not_recommended: 'warn', blocked: 'bad',
  delivered: 'ok', failed: 'bad',
  allow: 'ok', deny: 'bad',
};

export function humanize(s) {
  if (!s) return '';
  const words = String(s).toLowerCase().replaceAll('_', ' ');
  return words.charAt(0).toUpperCase() + words.slice(1);
}

export function badge(value, label) {
  return h('span', { class: ['badge', STATE_TONE[value]], 'data-state': value }, label || humanize(value));
}

/** A horizontal bar for a percentage. */
export function meter(pct, label, { big = false, text } = {}) {
  const v = Math.max(0, Math.min(100, Number(pct) || 0));
  const tone = v >= 90 ? 'bad' : v >= 75 ? 'warn' : '';
  return h('div', { class: ['meter', big && 'big'], role: 'meter', 'aria-label': label, 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.round(v) },
    h('div', { class: 'track' }, h('div', { class: ['fill', tone], style: { width: `${v}%` } })),
    h('span', { class: 'txt' }, text ?? percent(v)));
}

/** A table; `columns` are `{label, cell(row) → node|string, class?}`. Cells carry their column
 *  name so narrow screens can show rows as cards. */
export function table(columns, rows, { caption, rowAttrs } = {}) {
  return h('div', { class: 'table-wrap' },
    h('table', { class: 'data' },
      caption ? h('caption', { class: 'sr-only' }, caption) : null,
      h('thead', null, h('tr', null, columns.map((c) => h('th', { scope: 'col', class: c.class }, c.label)))),
      h('tbody', null, rows.map((row) => h('tr', rowAttrs ? rowAttrs(row) : null,
        columns.map((c) => h('td', { class: c.class, 'data-label': c.label }, c.cell(row))))))));
}

export function pager({ page, pageSize, total, hasMore }, go) {
  const pages = Math.max(1, Math.ceil((total || 0) / pageSize));
  return h('nav', { class: 'pager', 'aria-label': 'Pages' },
    h('span', { class: 'muted small' }, `${number(total)} in all · page ${page} of ${pages}`),
    h('button', { class: 'btn small', type: 'button', disabled: page <= 1, onclick: () => go(page - 1) }, '← Previous'),
    h('button', { class: 'btn small', type: 'button', disabled: !hasMore, onclick: () => go(page + 1) }, 'Next →'));
}

export function toast(message, tone) {
  const box = document.getElementById('toasts');
  if (!box) return;
  const el = h('div', { class: ['toast', tone] }, message);
  box.append(el);
  setTimeout(() => el.remove(), tone === 'bad' ? 7000 : 3500);
}

/** Asks before doing something that cannot be undone. Resolves to the reason typed (or '') when
 *  confirmed, to null when cancelled. */
export function confirmDialog({ title, text, confirm = 'Confirm', danger = false, reason = null, reasonRequired = false }) {
  return new Promise((resolve) => {
    const input = reason ? h('input', { type: 'text', name: 'reason', placeholder: reason, 'aria-label': reason, required: reasonRequired }) : null;
    const dialog = h('dialog', { 'aria-labelledby': 'dialog-title' },
      h('form', { method: 'dialog' },
        h('h2', { id: 'dialog-title' }, title),
        text ? h('p', null, text) : null,
        input ? h('div', { class: 'field' }, input) : null,
        h('div', { class: 'form-actions' },
          h('button', { class: 'btn', value: 'cancel', type: 'submit', formNoValidate: true }, 'Cancel'),
          h('button', { class: ['btn', danger ? 'danger solid' : 'primary'], value: 'ok', type: 'submit', 'data-confirm': '' }, confirm))));
    dialog.addEventListener('close', () => {
      const ok = dialog.returnValue === 'ok';
      dialog.remove();
      resolve(ok ? (input ? input.value.trim() : '') : null);
    });
    document.body.append(dialog);
    dialog.showModal();
    (input || dialog.querySelector('[data-confirm]')).focus();
  });
}

/** Runs `fn` at most once per `ms`, trailing. */
export function debounce(fn, ms) {
  let timer = null;
  const run = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  run.cancel = () => clearTimeout(timer);
  return run;
}
