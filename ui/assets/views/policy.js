// The approval policy of an org: rules that answer approvals before anyone is asked, tried top
// to bottom (the first that matches decides, else the default). Rules are reordered by dragging
// or with move buttons; each rule's examples are checked live against that rule alone, and
// saving shows the API's issues next to the fields they name. Validation is the API's: the page
// checks only what it cannot send (an example's context that is not JSON).
import { debounce, empty, errorBox, fill, h, loading } from '../dom.js';
import { ACTIONS, DECISIONS, DECISION_LABEL, RULE_ID, actionLabel, checkExample, policyPath, wireRule } from './rules.js';

/** What a new example's context starts as, by action: the shape agents send for it. */
const CONTEXT_TEMPLATES = {
  command: { tool: 'Bash', input: { command: '' } },
  file_change: { tool: 'Edit', input: { file_path: '' } },
};

const EXAMPLE_KINDS = [
  { kind: 'match', title: 'Must match', hint: 'Requests this rule must decide.' },
  { kind: 'notMatch', title: 'Must not match', hint: 'Requests this rule must leave to the rules below it.' },
];

/** Fields of a rule, by the path the API names them with (after `rules[i]`). */
const RULE_FIELDS = ['id', 'actions', 'match.tool', 'match.command', 'match.path', 'decision'];

let nextKey = 1;

function templateText(action) {
  return JSON.stringify(CONTEXT_TEMPLATES[action] || {});
}

function contextText(context) {
  const flat = JSON.stringify(context ?? null);
  return flat.length <= 72 ? flat : JSON.stringify(context, null, 2);
}

/** The JSON in an example's text area, or `{error}`. */
function parseContext(text) {
  try {
    return { value: JSON.parse(text) };
  } catch {
    return { error: 'The context is not valid JSON.' };
  }
}

export async function mount(main, ctx) {
  const { api, org } = ctx;
  fill(main,
    h('div', { class: 'page-head' },
      h('div', null, h('h1', null, 'Approval policy'),
        h('p', { class: 'muted' }, org
          ? ['Rules that answer the approvals of ', h('strong', null, org), ' before anyone is asked.']
          : 'Rules that answer an org\'s approvals before anyone is asked.'))));
  if (!org) {
    main.append(h('div', { class: 'alert info', role: 'status' }, 'Choose an org in the top bar to edit its approval policy.'));
    return;
  }
  const body = h('div', null, loading('Loading the policy…'));
  main.append(body);
  let saved;
  try {
    saved = await api.get(policyPath(org));
  } catch (e) {
    fill(body, e.status === 404 && e.code === 'NOT_FOUND'
      ? empty('Approval policies are not available on this server.')
      : errorBox(e, 'The policy could not be loaded'));
    return;
  }

  const list = h('ol', { class: 'rule-list', id: 'policy-rules', 'aria-label': 'Rules, first match decides' });
  const emptyNote = h('div', { id: 'policy-empty' });
  const live = h('div', { class: 'sr-only', role: 'status', 'aria-live': 'polite' });
  const formError = h('div', { id: 'policy-error', 'aria-live': 'assertive' });
  const status = h('span', { id: 'policy-status', class: 'small muted', role: 'status' });
  const defaultSelect = h('select', { id: 'policy-default', name: 'defaultDecision', 'aria-describedby': 'policy-default-error' },
    DECISIONS.map((d) => h('option', { value: d }, DECISION_LABEL[d])));
  const defaultError = h('span', { class: 'error', id: 'policy-default-error', 'data-error-for': 'defaultDecision' });
  const save = h('button', { class: 'btn primary', type: 'submit', id: 'policy-save' }, 'Save policy');
  const revert = h('button', { class: 'btn', type: 'button', id: 'policy-revert', onclick: () => show(saved, 'Changes discarded.') }, 'Discard changes');
  let editors = [];
  let dragging = null;

  const form = h('form', { id: 'policy-form', novalidate: true },
    formError,
    h('section', { class: 'card', 'aria-labelledby': 'rules-title' },
      h('div', { class: 'card-head' },
        h('h2', { id: 'rules-title' }, 'Rules'),
        h('span', { class: 'muted small' }, 'Tried top to bottom: the first rule that matches a request decides it.')),
      h('p', { class: 'small muted' },
        'A rule matches a request of one of its actions whose tool, command and file path match its globs (an empty glob matches anything). ',
        'In a glob, ', h('code', null, '*'), ' matches any run of characters (also “/”) and ', h('code', null, '?'),
        ' one character; ', h('code', null, '\\*'), ', ', h('code', null, '\\?'), ' and ', h('code', null, '\\\\'),
        ' match those characters themselves; the whole value must match, and case counts. The command of a request given as a list of words is matched with the words joined by spaces.'),
      emptyNote,
      list,
      h('button', { class: 'btn', type: 'button', id: 'add-rule', onclick: () => addRule() }, '+ Add rule')),
    h('section', { class: 'card section-gap', 'aria-labelledby': 'default-title' },
      h('div', { class: 'card-head' }, h('h2', { id: 'default-title' }, 'When no rule matches')),
      h('div', { class: 'field default-field' },
        h('label', { for: 'policy-default' }, 'Default decision'),
        defaultSelect,
        defaultError)),
    h('div', { class: 'form-actions policy-actions' }, save, revert, status),
    live);
  fill(body, form);

  function markDirty() {
    status.textContent = 'Unsaved changes';
    form.dataset.dirty = 'true';
  }

  form.addEventListener('input', markDirty);
  form.addEventListener('change', markDirty);

  function renumber() {
    editors.forEach((ed, i) => ed.setPosition(i, editors.length));
    fill(emptyNote, editors.length ? null : empty('No rules yet.', 'Every request gets the default decision below.'));
  }

  function place() {
    // Moving a focused element blurs it: put the focus back where it was.
    const focused = document.activeElement;
    for (const ed of editors) list.append(ed.el);
    if (focused && focused !== document.activeElement && list.contains(focused)) focused.focus();
    renumber();
  }

  function moveTo(editor, index) {
    const from = editors.indexOf(editor);
    const to = Math.max(0, Math.min(editors.length - 1, index));
    if (from < 0 || from === to) return;
    editors.splice(from, 1);
    editors.splice(to, 0, editor);
    place();
    clearErrors();
    markDirty();
    live.textContent = `Rule ${editor.label()} moved to position ${to + 1} of ${editors.length}.`;
  }

  const hooks = {
    org,
    move: (editor, delta) => moveTo(editor, editors.indexOf(editor) + delta),
    remove: (editor) => {
      const i = editors.indexOf(editor);
      editors.splice(i, 1);
      editor.el.remove();
      renumber();
      clearErrors();
      markDirty();
      live.textContent = `Rule ${editor.label()} removed.`;
      const neighbour = editors[i] || editors[i - 1];
      if (neighbour) neighbour.focusId();
      else document.getElementById('add-rule').focus();
    },
    dragStart: (editor) => { dragging = editor; },
    dragEnd: () => {
      dragging = null;
      for (const el of list.querySelectorAll('.drop-before, .drop-after')) el.classList.remove('drop-before', 'drop-after');
    },
  };

  function addRule() {
    const ed = ruleEditor({ id: '', actions: [], decision: 'allow' }, hooks);
    editors.push(ed);
    list.append(ed.el);
    renumber();
    markDirty();
    ed.focusId();
  }

  // Dragging a rule by its handle: dropped on the upper half of another rule it goes before it,
  // on the lower half after it.
  function dropSide(e) {
    const target = e.target.closest?.('[data-rule-key]');
    if (!dragging || !target || target === dragging.el) return null;
    const rect = target.getBoundingClientRect();
    return { target, after: e.clientY > rect.top + rect.height / 2 };
  }
  list.addEventListener('dragover', (e) => {
    const side = dropSide(e);
    if (!side) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = 'move';
    for (const el of list.querySelectorAll('.drop-before, .drop-after')) {
      if (el !== side.target) el.classList.remove('drop-before', 'drop-after');
    }
    side.target.classList.toggle('drop-after', side.after);
    side.target.classList.toggle('drop-before', !side.after);
  });
  list.addEventListener('drop', (e) => {
    const side = dropSide(e);
    if (!side) return;
    e.preventDefault();
    const moving = dragging;
    const over = editors.find((ed) => ed.el === side.target);
    const without = editors.filter((ed) => ed !== moving);
    const at = without.indexOf(over) + (side.after ? 1 : 0);
    hooks.dragEnd();
    moveTo(moving, at);
  });

  function clearErrors() {
    fill(formError);
    defaultError.textContent = '';
    defaultSelect.removeAttribute('aria-invalid');
    for (const ed of editors) ed.clearErrors();
  }

  /** Each issue next to what it names: `rules[i]…` in rule i, `defaultDecision`, else above. */
  function showIssues(err) {
    const rest = [];
    for (const issue of err.issues || []) {
      const path = issue.path || '';
      const m = /^rules\[(\d+)\](.*)$/.exec(path);
      if (m && editors[Number(m[1])]) {
        editors[Number(m[1])].showIssue(m[2], issue.message);
      } else if (path === 'defaultDecision') {
        defaultError.textContent = issue.message;
        defaultSelect.setAttribute('aria-invalid', 'true');
      } else {
        rest.push(issue);
      }
    }
    // The server's message repeats every issue: once they are shown where they belong, say only
    // how many there are, and list the ones that belong nowhere on the page.
    const placed = (err.issues || []).length - rest.length;
    const message = placed
      ? `${placed === 1 ? 'one problem is' : `${placed} problems are`} marked below${rest.length ? '; also:' : '.'}`
      : err.message;
    fill(formError, errorBox({ message, issues: rest }, 'The policy was not saved'));
    const first = form.querySelector('[aria-invalid="true"], [data-example][data-invalid]');
    (first || formError).scrollIntoView?.({ block: 'center' });
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors();
    const local = [];
    const rules = editors.map((ed, i) => ed.toWire(i, local));
    if (local.length) {
      showIssues({ message: 'Some examples are not valid JSON.', issues: local });
      status.textContent = 'Not saved';
      return;
    }
    save.disabled = true;
    save.textContent = 'Saving…';
    try {
      const answer = await api.put(policyPath(org), { rules, defaultDecision: defaultSelect.value });
      saved = answer;
      show(answer, 'Saved.');
    } catch (err) {
      if (err.code === 'VALIDATION_ERROR') showIssues(err);
      else fill(formError, errorBox(err, 'The policy was not saved'));
      status.textContent = 'Not saved';
    } finally {
      save.disabled = false;
      save.textContent = 'Save policy';
    }
  });

  function show(policy, note) {
    for (const ed of editors) {
      ed.dispose();
      ed.el.remove();
    }
    editors = (policy.rules || []).map((r) => ruleEditor(r, hooks));
    defaultSelect.value = policy.defaultDecision || 'ask';
    clearErrors();
    place();
    status.textContent = note || '';
    delete form.dataset.dirty;
  }

  show(saved);
  ctx.cleanup(() => editors.forEach((ed) => ed.dispose()));
}

/**
 * The editor of one rule: its fields, its examples with their live checks, and its controls
 * (drag handle, move up and down, remove).
 */
function ruleEditor(rule, hooks) {
  const key = nextKey++;
  const uid = (name) => `rule-${key}-${name}`;
  const errors = {};
  const controls = {};

  const fieldBox = (name, label, control, { wide = false, hint } = {}) => {
    control.id = uid(name.replace('.', '-'));
    control.name = `rule-${name}`;
    control.setAttribute('aria-describedby', `${control.id}-error`);
    controls[name] = control;
    errors[name] = h('span', { class: 'error', id: `${control.id}-error`, 'data-error-for': name });
    return h('div', { class: ['field', wide && 'wide'], 'data-field': name },
      h('label', { for: control.id }, label), control, hint ? h('span', { class: 'hint' }, hint) : null, errors[name]);
  };

  const id = h('input', { type: 'text', value: rule.id || '', autocomplete: 'off', spellcheck: false, maxLength: 64, placeholder: 'e.g. allow-git-status' });
  const known = [...ACTIONS, ...(rule.actions || []).filter((a) => a !== '*' && !ACTIONS.includes(a))];
  const any = (rule.actions || []).includes('*');
  const anyBox = h('input', { type: 'checkbox', name: 'rule-action', value: '*', id: uid('action-any'), checked: any });
  const actionBoxes = known.map((a) => h('input', {
    type: 'checkbox', name: 'rule-action', value: a, id: uid(`action-${a}`), checked: (rule.actions || []).includes(a), disabled: any,
  }));
  const actionsError = h('span', { class: 'error', id: uid('actions-error'), 'data-error-for': 'actions' });
  errors.actions = actionsError;
  const actionsBox = h('fieldset', { class: 'field wide action-choice', 'data-field': 'actions', 'aria-describedby': actionsError.id },
    h('legend', null, 'Actions'),
    h('div', { class: 'chips' },
      h('label', { class: 'chip', for: anyBox.id }, anyBox, 'Any action'),
      actionBoxes.map((box) => h('label', { class: 'chip', for: box.id }, box, actionLabel(box.value)))),
    actionsError);
  controls.actions = actionsBox;
  const tool = h('input', { type: 'text', value: rule.match?.tool || '', autocomplete: 'off', spellcheck: false, placeholder: 'any tool' });
  const command = h('input', { type: 'text', value: rule.match?.command || '', autocomplete: 'off', spellcheck: false, placeholder: 'any command' });
  const path = h('input', { type: 'text', value: rule.match?.path || '', autocomplete: 'off', spellcheck: false, placeholder: 'any file' });
  const decision = h('select', null, DECISIONS.map((d) => h('option', { value: d, selected: d === (rule.decision || 'allow') }, DECISION_LABEL[d])));
  const ruleError = h('div', { class: 'error rule-error' });
  const position = h('span', { class: 'rule-pos' });
  // After a move the pressed button stays focused, unless the rule reached an end and it is
  // disabled: then the other one takes the focus.
  const move = (delta, pressed, other) => {
    hooks.move(editor, delta);
    if (pressed.disabled) other.focus();
  };
  const up = h('button', { class: 'btn small', type: 'button', 'data-action': 'up', onclick: () => move(-1, up, down) }, '↑');
  const down = h('button', { class: 'btn small', type: 'button', 'data-action': 'down', onclick: () => move(1, down, up) }, '↓');
  const remove = h('button', { class: 'btn small danger', type: 'button', 'data-action': 'remove', onclick: () => hooks.remove(editor) }, 'Remove');
  const handle = h('span', { class: 'drag-handle', title: 'Drag to reorder', 'aria-hidden': 'true' }, '⠿');

  const examples = { match: [], notMatch: [] };
  const exampleLists = {};
  const exampleBoxes = EXAMPLE_KINDS.map(({ kind, title, hint }) => {
    exampleLists[kind] = h('ol', { class: 'example-list', 'data-examples': kind });
    return h('div', { class: 'examples', 'data-kind': kind },
      h('div', { class: 'examples-head' },
        h('h3', null, title),
        h('button', {
          class: 'btn small', type: 'button', 'data-action': `add-${kind === 'match' ? 'match' : 'not-match'}-example`,
          onclick: () => {
            const ex = addExample(kind, { action: firstAction(), context: CONTEXT_TEMPLATES[firstAction()] || {} });
            ex.focus();
            recheck();
          },
        }, '+ Example')),
      h('p', { class: 'hint small muted' }, hint),
      exampleLists[kind]);
  });

  const li = h('li', { class: 'rule-card', 'data-rule-key': key },
    h('div', { class: 'rule-head' },
      handle,
      position,
      h('div', { class: 'rule-id' }, fieldBox('id', 'Rule id', id)),
      h('div', { class: 'rule-moves' }, up, down, remove)),
    h('div', { class: 'rule-grid' },
      actionsBox,
      fieldBox('match.tool', 'Tool', tool),
      fieldBox('match.command', 'Command', command),
      fieldBox('match.path', 'File path', path),
      fieldBox('decision', 'Decision', decision)),
    h('details', { class: 'rule-examples', open: true },
      h('summary', null, 'Examples'),
      h('div', { class: 'examples-grid' }, exampleBoxes)),
    ruleError);

  // Only the handle starts a drag, so text in the fields can still be selected with the mouse.
  handle.addEventListener('pointerdown', () => { li.draggable = true; });
  handle.addEventListener('pointerup', () => { li.draggable = false; });
  li.addEventListener('dragstart', (e) => {
    if (!li.draggable) return;
    e.dataTransfer.effectAllowed = 'move';
    e.dataTransfer.setData('text/plain', id.value || `rule ${key}`);
    li.classList.add('dragging');
    hooks.dragStart(editor);
  });
  li.addEventListener('dragend', () => {
    li.draggable = false;
    li.classList.remove('dragging');
    hooks.dragEnd();
  });

  anyBox.addEventListener('change', () => {
    for (const box of actionBoxes) box.disabled = anyBox.checked;
  });

  function firstAction() {
    return actionBoxes.find((b) => b.checked)?.value || 'command';
  }

  function actions() {
    return anyBox.checked ? ['*'] : actionBoxes.filter((b) => b.checked).map((b) => b.value);
  }

  function current() {
    return {
      id: id.value.trim(),
      actions: actions(),
      match: { tool: tool.value, command: command.value, path: path.value },
      decision: decision.value,
    };
  }

  function addExample(kind, example) {
    const ex = exampleEditor(kind, example, uid(`${kind}-${nextKey++}`), {
      changed: () => recheck(),
      remove: () => {
        examples[kind].splice(examples[kind].indexOf(ex), 1);
        ex.el.remove();
        li.closest('form')?.dispatchEvent(new Event('change'));
        recheck();
      },
    });
    examples[kind].push(ex);
    exampleLists[kind].append(ex.el);
    return ex;
  }
  for (const { kind } of EXAMPLE_KINDS) for (const e of rule.examples?.[kind] || []) addExample(kind, e);

  // Every example checked against this rule alone, shortly after the last change.
  let generation = 0;
  const recheck = debounce(async () => {
    const mine = ++generation;
    const draft = current();
    const all = EXAMPLE_KINDS.flatMap(({ kind }) => examples[kind].map((ex) => ({ kind, ex })));
    let waiting = null;
    if (!RULE_ID.test(draft.id)) waiting = 'Give the rule an id (a–z, 0–9, “-” and “_”, at most 64) to check its examples.';
    else if (!draft.actions.length) waiting = 'Choose at least one action to check the examples.';
    await Promise.all(all.map(async ({ kind, ex }) => {
      const parsed = parseContext(ex.text());
      if (parsed.error) return ex.setResult('invalid', '✗ not JSON', parsed.error);
      if (waiting) return ex.setResult('unknown', '—', waiting);
      ex.setResult('pending', '…', 'Checking…');
      try {
        const { ok } = await checkExample(hooks.org, draft, kind, { action: ex.action(), context: parsed.value });
        if (mine !== generation) return;
        const text = kind === 'match'
          ? (ok ? '✓ the rule decides it' : '✗ the rule does not decide it')
          : (ok ? '✓ the rule leaves it' : '✗ the rule decides it');
        ex.setResult(ok ? 'pass' : 'fail', text);
      } catch (e) {
        if (mine !== generation) return;
        const issue = e.issues?.[0];
        ex.setResult('error', '?', issue ? `${issue.path}: ${issue.message}` : e.message);
      }
    }));
  }, 300);
  for (const control of [id, tool, command, path]) control.addEventListener('input', () => recheck());
  id.addEventListener('input', () => labelControls());
  for (const control of [decision, anyBox, ...actionBoxes]) control.addEventListener('change', () => recheck());

  let index = 0;
  function labelControls() {
    const name = id.value.trim() || `${index + 1}`;
    up.setAttribute('aria-label', `Move rule ${name} up`);
    down.setAttribute('aria-label', `Move rule ${name} down`);
    remove.setAttribute('aria-label', `Remove rule ${name}`);
  }

  const editor = {
    el: li,
    label: () => id.value.trim() || `${index + 1}`,
    focusId: () => id.focus(),
    setPosition(i, n) {
      index = i;
      li.dataset.ruleIndex = String(i);
      position.textContent = `${i + 1}.`;
      up.disabled = i === 0;
      down.disabled = i === n - 1;
      labelControls();
    },
    clearErrors() {
      for (const box of Object.values(errors)) box.textContent = '';
      ruleError.textContent = '';
      for (const el of li.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
      for (const ex of [...examples.match, ...examples.notMatch]) ex.clearError();
    },
    /** An issue of this rule; `rest` is its path after `rules[i]`. */
    showIssue(rest, message) {
      const m = /^\.examples\.(match|notMatch)\[(\d+)\]/.exec(rest);
      const ex = m && examples[m[1]][Number(m[2])];
      if (ex) return ex.showError(message);
      const name = RULE_FIELDS.find((f) => rest === `.${f}` || rest.startsWith(`.${f}.`) || rest.startsWith(`.${f}[`));
      if (name) {
        const box = errors[name];
        box.textContent = box.textContent ? `${box.textContent} ${message}` : message;
        controls[name].setAttribute('aria-invalid', 'true');
        return undefined;
      }
      ruleError.textContent = `${ruleError.textContent ? `${ruleError.textContent} ` : ''}${rest ? `${rest.replace(/^\./, '')}: ` : ''}${message}`;
      return undefined;
    },
    /** The rule as the API takes it; examples whose context is not JSON go to `local` as issues. */
    toWire(i, local) {
      const out = { match: [], notMatch: [] };
      for (const { kind } of EXAMPLE_KINDS) {
        examples[kind].forEach((ex, j) => {
          const parsed = parseContext(ex.text());
          if (parsed.error) local.push({ path: `rules[${i}].examples.${kind}[${j}]`, message: parsed.error });
          else out[kind].push({ action: ex.action(), context: parsed.value });
        });
      }
      return wireRule({ ...current(), examples: out });
    },
    dispose() {
      recheck.cancel();
      generation += 1;
    },
  };
  recheck();
  return editor;
}

/** One example of a rule: an action and the context an agent would send with it. */
function exampleEditor(kind, example, uid, hooks) {
  const action = h('select', { name: 'example-action', id: `${uid}-action`, 'aria-label': 'Action' },
    ACTIONS.map((a) => h('option', { value: a, selected: a === example.action }, actionLabel(a))));
  if (!ACTIONS.includes(example.action)) action.append(h('option', { value: example.action, selected: true }, example.action));
  const context = h('textarea', {
    name: 'example-context', id: `${uid}-context`, rows: 2, spellcheck: false, 'aria-label': 'Context (JSON)',
    value: contextText(example.context),
  });
  const status = h('span', { class: 'example-status', 'data-example-status': '', 'data-result': 'pending', role: 'status' }, '…');
  const note = h('span', { class: 'hint', 'data-example-note': '' });
  const error = h('span', { class: 'error', 'data-example-error': '' });
  const remove = h('button', { class: 'btn small link', type: 'button', 'data-action': 'remove-example', 'aria-label': 'Remove this example' }, 'Remove');
  const li = h('li', { 'data-example': '', 'data-kind': kind },
    h('div', { class: 'example-row' }, action, status, remove),
    context,
    note,
    error);
  let previousAction = action.value;
  action.addEventListener('change', () => {
    // An untouched template follows the action it was made for.
    if (context.value === templateText(previousAction)) context.value = templateText(action.value);
    previousAction = action.value;
    hooks.changed();
  });
  context.addEventListener('input', () => {
    // The server's word on this example was about what it said before.
    if (li.dataset.invalid) clearError();
    hooks.changed();
  });
  remove.addEventListener('click', () => hooks.remove());
  function clearError() {
    delete li.dataset.invalid;
    error.textContent = '';
    context.removeAttribute('aria-invalid');
  }
  return {
    el: li,
    action: () => action.value,
    text: () => context.value,
    focus: () => context.focus(),
    setResult(result, text, title) {
      status.dataset.result = result;
      status.textContent = text;
      status.title = title || '';
      note.textContent = result === 'error' || result === 'unknown' || result === 'invalid' ? title || '' : '';
    },
    showError(message) {
      li.dataset.invalid = 'true';
      error.textContent = message;
      context.setAttribute('aria-invalid', 'true');
    },
    clearError,
  };
}
