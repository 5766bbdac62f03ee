// The create-session form. Validation is the API's: the form sends what was typed and shows
// each issue the server returns next to its field (all of them at once), so the rules live in
// one place.
import { errorBox, fill, h } from '../dom.js';
import { PROVIDERS } from './parts.js';

/** Field ids by the API path of the value they hold. */
const FIELDS = {
  orgId: 'ns-org',
  providerId: 'ns-provider',
  'repo.url': 'ns-repo-url',
  'repo.branch': 'ns-repo-branch',
  'repo.commit': 'ns-repo-commit',
  task: 'ns-task',
  'options.timeoutMinutes': 'ns-timeout',
  'options.env': 'ns-env',
  'options.requiredFeatures': 'ns-features',
  'options.dangerouslySkipPermissions': 'ns-skip',
};

function field(path, label, control, hint) {
  const id = FIELDS[path];
  control.id = id;
  control.name = path;
  control.setAttribute('aria-describedby', `${id}-error${hint ? ` ${id}-hint` : ''}`);
  return h('div', { class: ['field', path === 'task' || path === 'repo.url' || path === 'options.env' ? 'wide' : null], 'data-field': path },
    h('label', { for: id }, label),
    control,
    hint ? h('span', { class: 'hint', id: `${id}-hint` }, hint) : null,
    h('span', { class: 'error', id: `${id}-error`, 'data-error-for': path }));
}

/** `KEY=value` lines → an object; a line without `=` is reported against its line number. */
function parseEnv(text) {
  const env = {};
  const problems = [];
  text.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    const eq = line.indexOf('=');
    if (eq <= 0) problems.push(`line ${i + 1}: write KEY=value`);
    else env[line.slice(0, eq).trim()] = line.slice(eq + 1);
  });
  return { env, problems };
}

export async function mount(main, ctx) {
  const { api, org, isAdmin } = ctx;
  const orgInput = h('input', { type: 'text', value: org, autocomplete: 'off', spellcheck: false, readOnly: !isAdmin });
  const provider = h('select', null, PROVIDERS.map((p) => h('option', { value: p.id }, p.label)));
  const url = h('input', { type: 'text', placeholder: 'https://github.com/acme/app.git', autocomplete: 'off', spellcheck: false });
  const branch = h('input', { type: 'text', placeholder: 'main', autocomplete: 'off', spellcheck: false });
  const commit = h('input', { type: 'text', placeholder: 'HEAD', autocomplete: 'off', spellcheck: false });
  const task = h('textarea', { rows: 5, placeholder: 'What should the agent do?' });
  const timeout = h('input', { type: 'text', inputMode: 'decimal', placeholder: 'server default' });
  const env = h('textarea', { rows: 3, placeholder: 'KEY=value, one per line' });
  const features = h('input', { type: 'text', placeholder: 'gpu, docker', autocomplete: 'off' });
  const skip = h('input', { type: 'checkbox' });
  const formError = h('div', { id: 'form-error', 'aria-live': 'assertive' });
  const submit = h('button', { class: 'btn primary', type: 'submit', id: 'create-session' }, 'Create session');

  const form = h('form', { novalidate: true, id: 'new-session-form' },
    formError,
    h('div', { class: 'form-grid' },
      field('orgId', 'Org', orgInput, isAdmin ? null : 'Your token works in this org.'),
      field('providerId', 'Agent', provider),
      field('repo.url', 'Repository URL', url, 'http(s)://, ssh://, git@host:path or file://'),
      field('repo.branch', 'Branch', branch),
      field('repo.commit', 'Commit', commit),
      field('task', 'Task', task),
      field('options.timeoutMinutes', 'Timeout (minutes)', timeout, '1 to 120'),
      field('options.requiredFeatures', 'Required runner features', features, 'Comma separated'),
      field('options.env', 'Environment', env, 'Values are sent to the runner only and never shown again.'),
      h('div', { class: 'field inline wide', 'data-field': 'options.dangerouslySkipPermissions' },
        skip, h('label', { for: FIELDS['options.dangerouslySkipPermissions'] }, 'Let the agent skip its permission prompts'),
        h('span', { class: 'error', id: 'ns-skip-error', 'data-error-for': 'options.dangerouslySkipPermissions' }))),
    h('div', { class: 'form-actions' }, submit, h('a', { class: 'btn', href: '/sessions' }, 'Cancel')));
  skip.id = FIELDS['options.dangerouslySkipPermissions'];

  fill(main,
    h('div', { class: 'page-head' }, h('div', null, h('h1', null, 'New session'), h('p', { class: 'muted' }, 'Queue an agent on a runner that offers the provider.'))),
    h('section', { class: 'card' }, form));

  function clearErrors() {
    fill(formError);
    for (const el of form.querySelectorAll('[data-error-for]')) el.textContent = '';
    for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  }

  /** Puts each issue next to its field (the longest field path that prefixes it). */
  function showIssues(issues, fallback) {
    const unplaced = [];
    let first = null;
    for (const issue of issues) {
      const path = Object.keys(FIELDS)
        .filter((p) => issue.path === p || issue.path.startsWith(`${p}.`) || issue.path.startsWith(`${p}[`))
        .sort((a, b) => b.length - a.length)[0];
      if (!path) {
        unplaced.push(issue);
        continue;
      }
      const box = form.querySelector(`[data-error-for="${path}"]`);
      box.textContent = box.textContent ? `${box.textContent} ${issue.message}` : capitalize(issue.message);
      const control = document.getElementById(FIELDS[path]);
      control.setAttribute('aria-invalid', 'true');
      first = first || control;
    }
    fill(formError, errorBox({ message: fallback, issues: unplaced }));
    (first || formError).focus?.();
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors();
    const { env: envValues, problems } = parseEnv(env.value);
    if (problems.length) {
      showIssues(problems.map((m) => ({ path: 'options.env', message: m })), 'Check the environment lines.');
      return;
    }
    const body = { orgId: orgInput.value.trim(), providerId: provider.value, repo: { url: url.value.trim() } };
    if (branch.value.trim()) body.repo.branch = branch.value.trim();
    if (commit.value.trim()) body.repo.commit = commit.value.trim();
    if (task.value.trim()) body.task = task.value;
    const options = {};
    if (timeout.value.trim()) {
      const n = Number(timeout.value.trim());
      options.timeoutMinutes = Number.isFinite(n) ? n : timeout.value.trim();
    }
    if (Object.keys(envValues).length) options.env = envValues;
    const feats = features.value.split(',').map((f) => f.trim()).filter(Boolean);
    if (feats.length) options.requiredFeatures = feats;
    if (skip.checked) options.dangerouslySkipPermissions = true;
    if (Object.keys(options).length) body.options = options;
    submit.disabled = true;
    submit.textContent = 'Creating…';
    try {
      const created = await api.post('/sessions', body);
      ctx.navigate(`/sessions/${created.sessionId}`);
    } catch (err) {
      submit.disabled = false;
      submit.textContent = 'Create session';
      if (err.code === 'VALIDATION_ERROR' && err.issues.length) {
        showIssues(err.issues, 'The session was not created. Fix the fields marked below.');
      } else if (err.code === 'INVALID_PROVIDER') {
        showIssues([{ path: 'providerId', message: err.message }], err.message);
      } else {
        fill(formError, errorBox(err, 'The session was not created'));
        formError.scrollIntoView({ block: 'nearest' });
      }
    }
  });
  (isAdmin && !org ? orgInput : url).focus();
}

function capitalize(s) {
  return s ? s.charAt(0).toUpperCase() + s.slice(1) : s;
}
