// Sign-in with a token. The token is checked with `GET /me` before it is kept (in this
// browser's localStorage); the answer also says whether it is an admin or an org token.
import { fill, h } from '../dom.js';

/** Whether a token's kind may use the dashboard; the sentence to show when not. */
export function dashboardRefusal(kind) {
  if (kind === 'admin' || kind === 'org') return null;
  return 'This is a runner token. The dashboard needs an admin or org token.';
}

function explain(err) {
  if (err.status === 401) {
    return 'That token was not accepted. Check that you copied all of it; it may also have been revoked.';
  }
  return err.message;
}

export function signIn(root, { message, tone = 'bad', check, done }) {
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'current-password', required: true,
    spellcheck: false, placeholder: 'Paste your token', 'aria-describedby': 'token-hint',
  });
  const status = h('div', { id: 'signin-message', 'aria-live': 'assertive' },
    message ? h('div', { class: ['alert', tone], role: tone === 'bad' ? 'alert' : 'status' }, message) : null);
  const button = h('button', { class: 'btn primary', type: 'submit', id: 'sign-in' }, 'Sign in');
  const form = h('form', {
    novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      const token = input.value.trim();
      if (!token) {
        fill(status, h('div', { class: 'alert bad', role: 'alert' }, 'Paste a token to sign in.'));
        input.setAttribute('aria-invalid', 'true');
        input.focus();
        return;
      }
      button.disabled = true;
      button.textContent = 'Checking…';
      try {
        const who = await check(token);
        const refusal = dashboardRefusal(who.kind);
        if (refusal) throw Object.assign(new Error(refusal), { status: 403 });
        done(token, who);
      } catch (err) {
        fill(status, h('div', { class: 'alert bad', role: 'alert' }, explain(err)));
        input.setAttribute('aria-invalid', 'true');
        input.select();
        button.disabled = false;
        button.textContent = 'Sign in';
      }
    },
  },
  status,
  // Lets password managers file the token under a name (and keeps Chromium's form audit quiet).
  h('input', { type: 'text', name: 'username', autocomplete: 'username', value: 'village', hidden: true }),
  h('div', { class: 'field' },
    h('label', { for: 'token' }, 'API token'),
    input,
    h('span', { class: 'hint', id: 'token-hint' },
      'An admin or org token. The first admin token is printed when the server starts and kept in ',
      h('code', null, '<data-dir>/admin-token'), '. It stays in this browser until you sign out.')),
  button);
  fill(root, h('div', { class: 'signin' },
    h('div', { class: 'card' },
      h('h1', null, h('img', { src: document.querySelector('link[rel="icon"]').getAttribute('href'), alt: '' }), 'Village'),
      h('p', { class: 'muted' }, 'Sign in to watch and steer your agent fleet.'),
      form)));
  input.focus();
  performance.mark('village:ready:signin');
}
