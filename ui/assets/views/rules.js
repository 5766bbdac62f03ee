// Approval policy rules, as the policy page and the approval cards share them: the action
// classes, reading a request's tool, command and path the way the server matches them, a rule
// proposed from a request ("Allow always like this…"), checking an example against a draft rule,
// and who decided an approval in words.
import { api } from '../api.js';
import { debounce, errorBox, fill, h, humanize } from '../dom.js';

export const ACTION_LABEL = {
  merge: 'Merge', deps_add: 'Add dependency', secrets: 'Use secrets', deploy: 'Deploy',
  command: 'Run a command', file_change: 'Change files', network: 'Network access', other: 'Use a tool',
};
export const ACTIONS = Object.keys(ACTION_LABEL);
export const DECISIONS = ['allow', 'ask', 'deny'];
export const DECISION_LABEL = { allow: 'Allow', ask: 'Ask a human', deny: 'Deny' };
export const RULE_ID = /^[a-z0-9_-]{1,64}$/;

export function actionLabel(action) {
  if (action === '*') return 'Any action';
  return ACTION_LABEL[action] || humanize(action);
}

/** Who decided an approval, in words: a policy rule, the policy's default, an approval link. */
export function resolverLabel(by) {
  if (!by) return '—';
  if (by === 'policy:default') return 'policy default';
  if (by.startsWith('policy:')) return `rule ${by.slice('policy:'.length)}`;
  if (by.startsWith('link:')) return `approval link (${by.slice('link:'.length)})`;
  return by;
}

/** The tool of an approval context, as `match.tool` sees it. */
export function contextTool(context) {
  return typeof context?.tool === 'string' ? context.tool : '';
}

/** The command of an approval context, as `match.command` sees it: a string, or an argv joined
 *  by spaces (not quoted for a shell: the glob is matched against exactly this). */
export function contextCommand(context) {
  const c = context?.input?.command;
  if (typeof c === 'string') return c;
  if (Array.isArray(c) && c.every((w) => typeof w === 'string')) return c.join(' ');
  return '';
}

/** The file of an approval context, as `match.path` sees it (`input.path` or `input.file_path`). */
export function contextPath(context) {
  const input = context?.input;
  if (typeof input?.path === 'string') return input.path;
  if (typeof input?.file_path === 'string') return input.file_path;
  return '';
}

/** A valid rule id made of `parts`, not one of `taken`. */
export function ruleIdFor(parts, taken = []) {
  const used = new Set(taken);
  const slug = parts.filter(Boolean).join('-').toLowerCase()
    .replace(/[^a-z0-9_-]+/g, '-').replace(/-{2,}/g, '-').replace(/^-+|-+$/g, '');
  const base = (slug || 'rule').slice(0, 64).replace(/-+$/, '') || 'rule';
  if (!used.has(base)) return base;
  for (let n = 2; ; n += 1) {
    const suffix = `-${n}`;
    const id = `${base.slice(0, 64 - suffix.length).replace(/-+$/, '')}${suffix}`;
    if (!used.has(id)) return id;
  }
}

/** `text` as a glob that matches exactly it: `*`, `?` and `\` escaped with a backslash (an
 *  agent's `rm -rf build/*` must not become a rule that allows any command starting so). */
export function literalGlob(text) {
  return text.replace(/[\\*?]/g, (c) => `\\${c}`);
}

/** The rule that "Allow always like this…" proposes for a request. */
export function ruleFromApproval(approval, taken = []) {
  const context = approval.context;
  const tool = contextTool(context);
  const command = contextCommand(context);
  const path = command ? '' : contextPath(context);
  const match = {};
  if (tool) match.tool = literalGlob(tool);
  if (command) match.command = literalGlob(command);
  if (path) match.path = literalGlob(path);
  const rule = {
    id: ruleIdFor(['allow', approval.action, command || path || tool], taken),
    actions: [approval.action],
    decision: 'allow',
    examples: { match: [{ action: approval.action, context: context ?? null }], notMatch: [] },
  };
  if (Object.keys(match).length) rule.match = match;
  return rule;
}

/** A rule as the API takes it: empty globs and empty example lists left out. */
export function wireRule({ id, actions, match = {}, decision, examples }) {
  const rule = { id, actions: [...actions], decision };
  const globs = Object.fromEntries(Object.entries(match).filter(([, v]) => typeof v === 'string' && v !== ''));
  if (Object.keys(globs).length) rule.match = globs;
  if (examples && (examples.match?.length || examples.notMatch?.length)) {
    rule.examples = { match: examples.match || [], notMatch: examples.notMatch || [] };
  }
  return rule;
}

/**
 * Whether an example behaves with `rule` alone (the rest of the policy left out, so what is
 * checked is this rule and nothing else): a `match` example must be decided by the rule, a
 * `notMatch` one must not. Resolves to `{ok, ruleId}`; rejects with the API's error.
 */
export async function checkExample(orgId, rule, kind, example) {
  const { examples: _ignored, ...alone } = wireRule(rule);
  const answer = await api.post(`/orgs/${encodeURIComponent(orgId)}/approval-policy/evaluate`, {
    action: example.action,
    context: example.context,
    policy: { rules: [alone], defaultDecision: 'ask' },
  });
  const decided = answer.ruleId === rule.id;
  return { ok: kind === 'match' ? decided : !decided, ruleId: answer.ruleId ?? null };
}

export function policyPath(orgId) {
  return `/orgs/${encodeURIComponent(orgId)}/approval-policy`;
}

/**
 * "Allow always like this…": proposes a rule that allows requests like `approval`, lets the
 * human edit it, and on confirmation puts it first in the org's policy (the request kept as an
 * example the rule must match, so the server refuses a rule that would not allow it). Resolves
 * to the saved rule, or null when cancelled. Answering the approval is the caller's.
 */
export function allowAlwaysDialog(approval, { orgId } = {}) {
  return new Promise((resolve) => {
    let saved = null;
    const body = h('div', { class: 'rule-dialog-body' }, h('p', { class: 'loading', role: 'status' }, 'Loading the policy…'));
    const dialog = h('dialog', { class: 'wide', 'aria-labelledby': 'allow-always-title', id: 'allow-always-dialog' },
      h('h2', { id: 'allow-always-title' }, 'Allow always like this'),
      body);
    dialog.addEventListener('close', () => {
      dialog.remove();
      resolve(saved);
    });
    document.body.append(dialog);
    dialog.showModal();

    const cancelOnly = () => h('div', { class: 'form-actions' },
      h('button', { class: 'btn', type: 'button', onclick: () => dialog.close() }, 'Close'));

    (async () => {
      let org = orgId;
      let policy;
      try {
        if (!org) org = (await api.get(`/sessions/${approval.sessionId}`)).orgId;
        policy = await api.get(policyPath(org));
      } catch (e) {
        fill(body, errorBox(e, 'The policy could not be loaded'), cancelOnly());
        return;
      }
      const proposal = ruleFromApproval(approval, (policy.rules || []).map((r) => r.id));
      form(org, proposal);
    })();

    function form(org, proposal) {
      const field = (name, label, control, hint) => {
        control.id = `aa-${name}`;
        control.name = name;
        return h('div', { class: 'field', 'data-field': name },
          h('label', { for: control.id }, label),
          control,
          hint ? h('span', { class: 'hint' }, hint) : null,
          h('span', { class: 'error', 'data-error-for': name }));
      };
      const id = h('input', { type: 'text', value: proposal.id, autocomplete: 'off', spellcheck: false, maxLength: 64 });
      const action = h('select', null,
        [...ACTIONS, '*'].map((a) => h('option', { value: a, selected: a === approval.action }, actionLabel(a))));
      const tool = h('input', { type: 'text', value: proposal.match?.tool || '', autocomplete: 'off', spellcheck: false, placeholder: 'any tool' });
      const command = h('input', { type: 'text', value: proposal.match?.command || '', autocomplete: 'off', spellcheck: false, placeholder: 'any command' });
      const path = h('input', { type: 'text', value: proposal.match?.path || '', autocomplete: 'off', spellcheck: false, placeholder: 'any file' });
      const check = h('p', { class: 'example-check', id: 'aa-check', role: 'status', 'aria-live': 'polite' });
      const breadth = h('div', { 'aria-live': 'polite' });
      // A rule without globs allows every request of its action: say so before it is saved.
      const showBreadth = () => {
        const open = !tool.value && !command.value && !path.value;
        fill(breadth, open
          ? h('div', { class: 'alert warn', role: 'note' },
            `With no tool, command or file path, this rule allows every request${action.value === '*' ? '' : ` to ${actionLabel(action.value).toLowerCase()}`} in ${org}, without asking.`)
          : null);
      };
      const formError = h('div', { id: 'aa-error', 'aria-live': 'assertive' });
      const confirm = h('button', { class: 'btn ok', type: 'submit', 'data-confirm': '' }, 'Add rule and allow');
      const draft = () => ({
        id: id.value.trim(),
        actions: [action.value],
        match: { tool: tool.value, command: command.value, path: path.value },
        decision: 'allow',
        examples: proposal.examples,
      });

      let seq = 0;
      const recheck = debounce(async () => {
        const rule = draft();
        const mine = ++seq;
        if (!RULE_ID.test(rule.id)) {
          setCheck('unknown', 'Give the rule an id (a–z, 0–9, “-” and “_”) to check it.');
          return;
        }
        try {
          const { ok } = await checkExample(org, rule, 'match', proposal.examples.match[0]);
          if (mine !== seq) return;
          setCheck(ok ? 'pass' : 'fail', ok
            ? '✓ This request matches the rule.'
            : '✗ This request does not match the rule as written: the server will refuse it.');
        } catch (e) {
          if (mine === seq) setCheck('error', e.message);
        }
      }, 300);
      function setCheck(result, text) {
        check.dataset.result = result;
        check.textContent = text;
      }

      const f = h('form', {
        novalidate: true,
        oninput: () => { recheck(); showBreadth(); },
        onsubmit: async (e) => {
          e.preventDefault();
          clearErrors();
          const rule = wireRule(draft());
          confirm.disabled = true;
          confirm.textContent = 'Saving…';
          try {
            // The policy as it is now, not as it was when the dialog opened.
            const current = await api.get(policyPath(org));
            await api.put(policyPath(org), {
              rules: [rule, ...(current.rules || [])],
              defaultDecision: current.defaultDecision || 'ask',
            });
            saved = { rule, orgId: org };
            dialog.close();
          } catch (err) {
            confirm.disabled = false;
            confirm.textContent = 'Add rule and allow';
            showIssues(err);
          }
        },
      },
      h('p', { class: 'small muted' },
        'Adds a rule at the top of the approval policy of ', h('strong', null, org),
        ': requests like this one are then allowed without asking anyone. This request is allowed too. ',
        'In the globs, * matches any run of characters (also “/”) and ? one character; \\*, \\? and \\\\ match those characters themselves; the whole value must match.'),
      formError,
      h('div', { class: 'form-grid' },
        field('id', 'Rule id', id, 'a–z, 0–9, “-” and “_”'),
        field('actions', 'Action', action),
        field('match.tool', 'Tool', tool),
        field('match.command', 'Command', command),
        h('div', { class: 'wide' }, field('match.path', 'File path', path))),
      breadth,
      h('p', { class: 'small muted' }, 'This request is kept with the rule as an example it must match.'),
      check,
      h('div', { class: 'form-actions' },
        h('button', { class: 'btn', type: 'button', value: 'cancel', onclick: () => dialog.close() }, 'Cancel'),
        confirm));
      fill(body, f);
      recheck();
      showBreadth();
      id.focus();

      function clearErrors() {
        fill(formError);
        for (const el of f.querySelectorAll('[data-error-for]')) el.textContent = '';
        for (const el of f.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
      }

      /** Issues about the new rule (`rules[0].…`) go next to their field, the rest above. */
      function showIssues(err) {
        const issues = err.issues || [];
        const rest = [];
        for (const issue of issues) {
          const m = /^rules\[0\]\.(id|actions|match\.(?:tool|command|path)|examples)/.exec(issue.path || '');
          if (!m) {
            rest.push(issue);
            continue;
          }
          if (m[1] === 'examples') {
            setCheck('fail', `✗ ${issue.message}`);
            continue;
          }
          const box = f.querySelector(`[data-error-for="${m[1]}"]`);
          box.textContent = box.textContent ? `${box.textContent} ${issue.message}` : issue.message;
          f.querySelector(`[name="${m[1]}"]`)?.setAttribute('aria-invalid', 'true');
        }
        const placed = issues.length - rest.length;
        const message = placed
          ? `${placed === 1 ? 'one problem is' : `${placed} problems are`} marked below${rest.length ? '; also:' : '.'}`
          : err.message;
        fill(formError, errorBox({ message, issues: rest }, 'The rule was not saved'));
      }
    }
  });
}
