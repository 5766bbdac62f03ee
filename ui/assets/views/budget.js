// Budgets, shared by the spend page, the overview and the session page: the org's limits, which
// of them stopped a session, and "Raise and resume": a dialog proposing a raised limit, the
// budget saved with the other limits kept, then the session resumed. A raised limit never
// resumes anything by itself (the server's rule), so the resume is its own call.
import { api } from '../api.js';
import { h, number, shortId, toast, usd } from '../dom.js';

/** The limits of a budget, in the order the editor shows them. `null` is "no limit". */
export const LIMITS = [
  { key: 'monthlyUsd', label: 'Monthly budget', unit: 'usd', what: 'monthly budget', hint: 'US dollars the org may spend in a calendar month (UTC). New sessions are refused past it.' },
  { key: 'sessionUsd', label: 'Per-session cap', unit: 'usd', what: 'per-session cap', hint: 'US dollars one session may spend before it is paused.' },
  { key: 'sessionTokens', label: 'Per-session tokens', unit: 'tokens', what: 'per-session token cap', hint: 'Tokens in and out one session may use before it is paused.' },
];

export function budgetPath(org) {
  return `/orgs/${encodeURIComponent(org)}/budget`;
}

export function usagePath(org) {
  return `/orgs/${encodeURIComponent(org)}/usage`;
}

/** The three limits of a budget answer, nothing else (what a PUT takes). */
export function limitsOf(budget) {
  const out = {};
  for (const { key } of LIMITS) out[key] = typeof budget?.[key] === 'number' ? budget[key] : null;
  return out;
}

/** A limit's value in words. */
export function limitText(key, value) {
  if (typeof value !== 'number') return 'No limit';
  return LIMITS.find((l) => l.key === key)?.unit === 'tokens' ? `${number(value)} tokens` : usd(value);
}

/** Tokens a session used: in and out. */
export function tokensOf(usage) {
  return (usage?.tokensIn ?? 0) + (usage?.tokensOut ?? 0);
}

/**
 * Which limit holds a session back now: `{key, limit, spent}` — its own caps first (cost, then
 * tokens), else the org's month. `monthSpent` is the org's spend this month (only read when
 * there is a monthly budget). Null when no limit is reached any more.
 */
export function stoppedBy(session, budget, monthSpent) {
  const u = session?.usage || {};
  const cost = u.costUsd ?? session?.costUsd ?? 0;
  if (typeof budget?.sessionUsd === 'number' && cost >= budget.sessionUsd) {
    return { key: 'sessionUsd', limit: budget.sessionUsd, spent: cost };
  }
  if (typeof budget?.sessionTokens === 'number' && tokensOf(u) >= budget.sessionTokens) {
    return { key: 'sessionTokens', limit: budget.sessionTokens, spent: tokensOf(u) };
  }
  if (typeof budget?.monthlyUsd === 'number' && typeof monthSpent === 'number' && monthSpent >= budget.monthlyUsd) {
    return { key: 'monthlyUsd', limit: budget.monthlyUsd, spent: monthSpent };
  }
  return null;
}

/** A round value above both twice the old limit and half again the spend. */
export function proposedLimit(stop) {
  const tokens = LIMITS.find((l) => l.key === stop.key)?.unit === 'tokens';
  const base = Math.max(stop.limit * 2, stop.spent * 1.5, tokens ? 1 : 0.01);
  const step = Math.max(tokens ? 1 : 0.01, 10 ** Math.floor(Math.log10(base)) / 2);
  const value = Math.ceil(base / step - 1e-9) * step;
  return tokens ? Math.round(value) : Math.round(value * 100) / 100;
}

/** What a stop is, in a sentence: "spent $1.50 of its $1.00 per-session cap". */
export function stopText(stop) {
  const limit = LIMITS.find((l) => l.key === stop.key);
  const spent = limit.unit === 'tokens' ? `${number(stop.spent)} tokens` : usd(stop.spent);
  return stop.key === 'monthlyUsd'
    ? `the org spent ${spent} of its ${limitText(stop.key, stop.limit)} ${limit.what}`
    : `it used ${spent} of its ${limitText(stop.key, stop.limit)} ${limit.what}`;
}

/** A `budget_reached` frame's data in a sentence (the session is paused for it). */
export function reachedText(d) {
  const session = `Session ${shortId(d?.sessionId)} paused`;
  if (d?.scope === 'org') return `${session}: the org spent ${usd(d.spent)} of its ${usd(d.limit)} monthly budget.`;
  if (d?.metric === 'tokens') return `${session}: it used ${number(d.spent)} tokens of its ${number(d.limit)}-token cap.`;
  return `${session}: it spent ${usd(d?.spent)} of its ${usd(d?.limit)} per-session cap.`;
}

/**
 * The dialog: the proposed limit, editable. Resolves to `{action: 'raise', value}`,
 * `{action: 'force'}` (resume without raising, admins) or null (cancelled).
 */
export function raiseDialog({ sessionId, stop, org }) {
  return new Promise((resolve) => {
    const limit = LIMITS.find((l) => l.key === stop.key);
    const tokens = limit.unit === 'tokens';
    const input = h('input', {
      id: 'raise-value', name: stop.key, type: 'text', inputMode: tokens ? 'numeric' : 'decimal', autocomplete: 'off',
      value: String(proposedLimit(stop)), 'aria-describedby': 'raise-hint raise-error',
    });
    const error = h('span', { class: 'error', id: 'raise-error', role: 'alert' });
    const dialog = h('dialog', { id: 'raise-dialog', 'aria-labelledby': 'raise-title' },
      h('form', { method: 'dialog', novalidate: true },
        h('h2', { id: 'raise-title' }, `Raise the ${limit.what} and resume?`),
        h('p', null, `Session ${shortId(sessionId)} was paused because ${stopText(stop)}.`),
        h('div', { class: 'field' },
          h('label', { for: 'raise-value' }, `New ${limit.what}${tokens ? ' (tokens)' : ' (US dollars)'}`),
          input,
          h('span', { class: 'hint', id: 'raise-hint' }, stop.key === 'monthlyUsd'
            ? `The budget of ${org} for every month. Other limits stay as they are.`
            : `Applies to every session of ${org}. Other limits stay as they are.`),
          error),
        h('div', { class: 'form-actions' },
          h('button', { class: 'btn', value: 'cancel', type: 'submit', formNoValidate: true }, 'Cancel'),
          h('button', { class: 'btn', value: 'force', type: 'submit', 'data-action': 'force-resume', title: 'Resume this session over its budget, leaving the limit as it is: it is not paused for budget again' }, 'Resume without raising'),
          h('button', { class: 'btn primary', value: 'ok', type: 'submit', 'data-confirm': '' }, 'Raise and resume'))));
    // Enter in the field means "Raise and resume" (the form's first button is Cancel).
    input.addEventListener('keydown', (e) => {
      if (e.key !== 'Enter') return;
      e.preventDefault();
      dialog.querySelector('[data-confirm]').click();
    });
    let value = null;
    dialog.querySelector('form').addEventListener('submit', (e) => {
      if (e.submitter?.value !== 'ok') return;
      const text = input.value.trim();
      const n = Number(text);
      let problem = '';
      if (!text || !Number.isFinite(n)) problem = 'Enter a number.';
      else if (tokens && !Number.isInteger(n)) problem = 'Enter a whole number of tokens.';
      else if (n <= stop.spent) problem = `Enter more than what was spent (${tokens ? number(stop.spent) : usd(stop.spent)}), or the session stays paused.`;
      if (problem) {
        e.preventDefault();
        error.textContent = problem;
        input.setAttribute('aria-invalid', 'true');
        input.focus();
        return;
      }
      value = n;
    });
    dialog.addEventListener('close', () => {
      const answer = dialog.returnValue;
      dialog.remove();
      if (answer === 'ok' && value !== null) resolve({ action: 'raise', value });
      else if (answer === 'force') resolve({ action: 'force' });
      else resolve(null);
    });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
    input.select();
  });
}

/**
 * "Raise and resume" for a session paused for budget (admins): reads the session, the budget and
 * (with a monthly budget) the month's spend, asks with the dialog, saves the raised limit keeping
 * the others, then resumes. Failures become toasts. Resolves to true when the session resumed.
 */
export async function raiseAndResume(sessionId, org) {
  let session;
  let budget;
  let monthSpent = null;
  try {
    [session, budget] = await Promise.all([api.get(`/sessions/${sessionId}`), api.get(budgetPath(org))]);
    if (typeof budget.monthlyUsd === 'number') monthSpent = (await api.get(usagePath(org))).costUsd;
  } catch (e) {
    toast(e.message, 'bad');
    return false;
  }
  const stop = stoppedBy(session, budget, monthSpent);
  let choice = { action: 'resume' };
  if (stop) {
    choice = await raiseDialog({ sessionId, stop, org });
    if (!choice) return false;
  }
  if (choice.action === 'raise') {
    try {
      await api.put(budgetPath(org), { ...limitsOf(budget), [stop.key]: choice.value });
    } catch (e) {
      toast(`The budget was not changed: ${e.issues?.length ? e.issues.map((i) => i.message).join(' ') : e.message}`, 'bad');
      return false;
    }
  }
  try {
    await api.post(`/sessions/${sessionId}/resume`, choice.action === 'force' ? { force: true } : undefined);
  } catch (e) {
    toast(choice.action === 'raise'
      ? `The ${LIMITS.find((l) => l.key === stop.key).what} is now ${limitText(stop.key, choice.value)}, but the session did not resume: ${e.message}`
      : `The session did not resume: ${e.message}`, 'bad');
    return false;
  }
  toast(choice.action === 'raise'
    ? `${LIMITS.find((l) => l.key === stop.key).label} raised to ${limitText(stop.key, choice.value)}; session ${shortId(sessionId)} resumed.`
    : `Session ${shortId(sessionId)} resumed.`);
  return true;
}
