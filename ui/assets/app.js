// Village dashboard: boot, sign-in state, the page shell and the router. Views live in
// ./views/ and get a context with the API, the live stream and the chosen org.
import './csp.js';
import { ApiError, api, forgetToken, onUnauthorized, request, storeToken, storedToken } from './api.js';
import { Stream } from './stream.js';
import { fill, h, tickAges, toast } from './dom.js';
import * as overview from './views/overview.js';
import * as sessions from './views/sessions.js';
import * as newSession from './views/new-session.js';
import * as runners from './views/runners.js';
import * as pipeline from './views/pipeline.js';
import * as admin from './views/admin.js';
import * as policy from './views/policy.js';
import * as spend from './views/spend.js';
import { dashboardRefusal, signIn } from './views/signin.js';
import { approvalAnswered, notifyApproval } from './notify.js';
import { reachedText } from './views/budget.js';

const ORG_KEY = 'village.org';
const RECENT_ORGS_KEY = 'village.recentOrgs';

const ROUTES = [
  { pattern: /^\/$/, nav: 'overview', title: 'Overview', load: () => overview },
  { pattern: /^\/sessions\/new$/, nav: 'sessions', title: 'New session', load: () => newSession },
  // The terminal (xterm.js) is only fetched when a session is opened.
  { pattern: /^\/sessions\/([0-9a-fA-F-]{36})$/, nav: 'sessions', title: 'Session', load: () => import('./views/session.js') },
  { pattern: /^\/sessions$/, nav: 'sessions', title: 'Sessions', load: () => sessions },
  { pattern: /^\/runners$/, nav: 'runners', title: 'Runners', load: () => runners },
  { pattern: /^\/spend$/, nav: 'spend', title: 'Spend', load: () => spend },
  { pattern: /^\/policy$/, nav: 'policy', title: 'Approval policy', load: () => policy },
  { pattern: /^\/pipeline$/, nav: 'pipeline', title: 'Pipeline', load: () => pipeline },
  { pattern: /^\/admin(?:\/(tokens|webhooks|audit))?$/, nav: 'admin', title: 'Admin', load: () => admin, adminOnly: true },
];

const NAV = [
  { id: 'overview', href: '/', label: 'Overview' },
  { id: 'sessions', href: '/sessions', label: 'Sessions' },
  { id: 'runners', href: '/runners', label: 'Runners' },
  { id: 'spend', href: '/spend', label: 'Spend' },
  { id: 'policy', href: '/policy', label: 'Policy' },
  { id: 'pipeline', href: '/pipeline', label: 'Pipeline' },
  { id: 'admin', href: '/admin', label: 'Admin', adminOnly: true },
];

const root = document.getElementById('app');
let me = null;
let stream = null;
let org = '';
let shell = null;
let cleanups = [];
let renderSeq = 0;

function isAdmin() {
  return me?.kind === 'admin';
}

function rememberOrg(value) {
  org = value;
  if (!isAdmin()) return;
  localStorage.setItem(ORG_KEY, value);
  if (!value) return;
  const recent = JSON.parse(localStorage.getItem(RECENT_ORGS_KEY) || '[]').filter((o) => o !== value);
  recent.unshift(value);
  localStorage.setItem(RECENT_ORGS_KEY, JSON.stringify(recent.slice(0, 8)));
}

function navigate(path, { replace = false } = {}) {
  if (path === location.pathname + location.search) return route();
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  return route();
}

function runCleanups() {
  for (const fn of cleanups.splice(0)) {
    try {
      fn();
    } catch (e) {
      console.warn('cleanup failed', e);
    }
  }
}

/** What a view gets: everything it needs, with listeners removed when it goes away. */
function context(params) {
  const own = [];
  cleanups.push(() => own.splice(0).forEach((fn) => fn()));
  return {
    api,
    stream,
    me,
    org,
    isAdmin: isAdmin(),
    params,
    query: new URLSearchParams(location.search),
    navigate,
    /** Every frame from the stream while the view is shown. */
    onFrame(fn) {
      own.push(stream.onFrameOf(fn));
    },
    /** After a reconnect: reload, events may have been missed. */
    onResync(fn) {
      stream.addEventListener('resync', fn);
      own.push(() => stream.removeEventListener('resync', fn));
    },
    every(ms, fn) {
      const id = setInterval(fn, ms);
      own.push(() => clearInterval(id));
    },
    cleanup(fn) {
      own.push(fn);
    },
  };
}

async function route() {
  if (!me) return;
  const seq = ++renderSeq;
  if (shell) delete shell.main.dataset.ready;
  runCleanups();
  const path = location.pathname.replace(/\/+$/, '') || '/';
  const found = ROUTES.map((r) => ({ r, m: path.match(r.pattern) })).find((x) => x.m);
  renderShell(found?.r.nav);
  const main = shell.main;
  if (!found) {
    document.title = 'Not found · Village';
    fill(main, h('div', { class: 'empty' }, h('strong', null, 'There is no page here.'), h('a', { href: '/' }, 'Go to the overview')));
    return;
  }
  if (found.r.adminOnly && !isAdmin()) {
    document.title = `${found.r.title} · Village`;
    fill(main, h('div', { class: 'empty' }, h('strong', null, 'This page needs an admin token.'), 'Tokens, webhooks and the audit log are managed by admins.'));
    return;
  }
  document.title = `${found.r.title} · Village`;
  fill(main, h('div', { class: 'loading' }, 'Loading…'));
  let view;
  try {
    view = await found.r.load();
  } catch (e) {
    console.warn('view failed to load', e);
    fill(main, h('div', { class: 'alert bad' }, 'This page could not be loaded. Reload the page to try again.'));
    return;
  }
  if (seq !== renderSeq) return;
  fill(main);
  const ctx = context(found.m.slice(1));
  ctx.every(1000, () => tickAges(main));
  try {
    await view.mount(main, ctx);
    if (seq !== renderSeq) return;
    // Tests and the load-time benchmark wait for this: the page has its data on screen.
    main.dataset.ready = found.r.nav;
    performance.mark(`village:ready:${found.r.nav}`);
  } catch (e) {
    if (seq !== renderSeq) return;
    console.warn('view failed', e);
    fill(main, h('div', { class: 'alert bad', role: 'alert' }, e instanceof ApiError ? e.message : 'Something went wrong showing this page.'));
  }
}

function connectionLabel(state) {
  return { live: 'Live', connecting: 'Connecting…', reconnecting: 'Reconnecting…', offline: 'Offline' }[state] || state;
}

function orgPicker() {
  if (!isAdmin()) {
    return h('span', { class: 'who' }, 'Org ', h('strong', null, org || '—'));
  }
  const recent = JSON.parse(localStorage.getItem(RECENT_ORGS_KEY) || '[]');
  const input = h('input', { id: 'org-input', name: 'org', value: org, list: 'recent-orgs', placeholder: 'org id', autocomplete: 'off', spellcheck: false });
  return h('form', {
    class: 'org-picker',
    role: 'search',
    onsubmit: (e) => {
      e.preventDefault();
      const value = input.value.trim();
      if (value && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(value)) {
        toast('An org id is letters, digits, ".", "_" or "-" (at most 64).', 'bad');
        return;
      }
      rememberOrg(value);
      stream.setOrg(value);
      shell = null;
      route();
    },
  },
  h('label', { for: 'org-input' }, 'Org'),
  input,
  h('datalist', { id: 'recent-orgs' }, recent.map((o) => h('option', { value: o }))),
  h('button', { class: 'btn small', type: 'submit' }, 'Switch'));
}

function renderShell(active) {
  if (!shell) {
    const conn = h('span', { class: 'conn', 'data-state': stream.state, role: 'status', 'aria-live': 'polite', id: 'connection' }, connectionLabel(stream.state));
    const links = NAV.filter((n) => !n.adminOnly || isAdmin()).map((n) => h('a', { href: n.href, 'data-nav': n.id }, h('span', null, n.label)));
    const main = h('main', { id: 'main', tabindex: -1 });
    const el = h('div', { class: 'shell' },
      h('a', { class: 'brand', href: '/', 'aria-label': 'Village overview' }, h('img', { src: document.querySelector('link[rel="icon"]').getAttribute('href'), alt: '' }), h('span', { class: 'brand-name' }, 'Village')),
      h('header', { class: 'topbar' },
        orgPicker(),
        h('span', { class: 'spacer' }),
        conn,
        h('span', { class: 'who', title: `Token ${me.tokenId}` }, `${me.name} · ${me.kind}`),
        h('button', { class: 'btn small', type: 'button', id: 'sign-out', onclick: signOut }, 'Sign out')),
      h('nav', { class: 'sidenav', 'aria-label': 'Main' }, links),
      main);
    fill(root, el);
    root.removeAttribute('aria-busy');
    shell = { el, main, conn, links };
  }
  for (const a of shell.links) {
    if (a.dataset.nav === active) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function onStatus(e) {
  if (!shell) return;
  shell.conn.dataset.state = e.detail.state;
  shell.conn.textContent = connectionLabel(e.detail.state);
  shell.conn.title = e.detail.reason || '';
}

function signOut(_e, message) {
  runCleanups();
  stream?.stop();
  stream = null;
  me = null;
  shell = null;
  forgetToken();
  history.replaceState(null, '', '/');
  showSignIn(message || 'You are signed out.', message ? 'bad' : 'info');
}

function showSignIn(message, tone) {
  document.title = 'Sign in · Village';
  root.removeAttribute('aria-busy');
  signIn(root, {
    message,
    tone,
    check: (token) => request('GET', '/me', undefined, { token }),
    done: (token, who) => {
      storeToken(token);
      start(token, who);
    },
  });
}

function start(token, who) {
  me = who;
  org = isAdmin() ? (localStorage.getItem(ORG_KEY) || '') : (who.orgId || '');
  stream = new Stream(token);
  stream.addEventListener('status', onStatus);
  stream.addEventListener('unauthorized', (e) => signOut(null, e.detail.message));
  stream.onFrameOf((f) => {
    if (f.type === 'approval_required') notifyApproval(f, () => navigate('/'));
    else if (f.type === 'event' && f.event === 'approval_resolved') approvalAnswered(f.data?.approvalId);
    else if (f.type === 'event' && f.event === 'budget_reached') toast(reachedText(f.data), 'bad');
  });
  stream.setOrg(org);
  stream.start();
  shell = null;
  route();
}

/** The token of an approval link (`/approve/<token>`), if this is one. */
function approvalLink() {
  const m = location.pathname.match(/^\/approve\/([^/]+)\/?$/);
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return m[1];
  }
}

async function boot() {
  // An approval link works without signing in (and whatever token this browser holds): the
  // link is the credential. It is its own small page, not part of the signed-in app.
  const link = approvalLink();
  if (link !== null) {
    try {
      const page = await import('./views/approve.js');
      page.mount(root, link);
    } catch (e) {
      console.warn('approval page failed to load', e);
      root.removeAttribute('aria-busy');
      fill(root, h('div', { class: 'alert bad', role: 'alert' }, 'This page could not be loaded. Reload the page to try again.'));
    }
    return;
  }
  window.addEventListener('popstate', route);
  document.addEventListener('click', (e) => {
    const a = e.target.closest?.('a[href]');
    if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const href = a.getAttribute('href');
    if (!href.startsWith('/') || href.startsWith('/api/') || a.target || a.hasAttribute('download')) return;
    e.preventDefault();
    navigate(href);
  });
  onUnauthorized(() => {
    if (me) signOut(null, 'Your token is no longer accepted: it was revoked. Sign in with another token.');
  });
  const token = storedToken();
  if (!token) return showSignIn();
  try {
    const who = await request('GET', '/me', undefined, { token });
    const refusal = dashboardRefusal(who.kind);
    if (refusal) {
      forgetToken();
      return showSignIn(refusal, 'bad');
    }
    start(token, who);
  } catch (e) {
    if (e.status === 401) {
      forgetToken();
      return showSignIn('Your saved token is no longer accepted: it was revoked. Sign in with another token.', 'bad');
    }
    root.removeAttribute('aria-busy');
    fill(root, h('div', { class: 'signin' }, h('div', { class: 'card' },
      h('h1', null, 'Village'),
      h('div', { class: 'alert bad', role: 'alert' }, e.message),
      h('button', { class: 'btn primary', type: 'button', onclick: () => boot() }, 'Try again'))));
  }
}

boot();
