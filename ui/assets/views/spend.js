// Spend of the chosen org, by month: the total against the monthly budget, spend by day stacked
// by provider (an SVG drawn here, with a table for screen readers), totals by provider, cost per
// completed session and failure rate by runner build, and the budget editor (admins edit; org
// tokens read). Usage reports are not on the stream: session events (a state change, an end, a
// budget reached) reload the figures.
import { debounce, empty, errorBox, fill, h, loading, meter, number, patch, table, toast, usd } from '../dom.js';
import { PROVIDERS, providerLabel } from './parts.js';
import { LIMITS, budgetPath, limitText, limitsOf, usagePath } from './budget.js';

const MONTH = /^\d{4}-(0[1-9]|1[0-2])$/;
const MONTHS_BACK = 12;
const SVG_NS = 'http://www.w3.org/2000/svg';
const CHART_HEIGHT = 220;

/** An SVG element (attributes set as given; text children as text nodes). */
function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function currentMonth() {
  return new Date().toISOString().slice(0, 7);
}

function shiftMonth(month, by) {
  const [y, m] = month.split('-').map(Number);
  const d = new Date(Date.UTC(y, m - 1 + by, 1));
  return d.toISOString().slice(0, 7);
}

function monthLabel(month) {
  const [y, m] = month.split('-').map(Number);
  return new Date(Date.UTC(y, m - 1, 1)).toLocaleDateString('en-US', { month: 'long', year: 'numeric', timeZone: 'UTC' });
}

function daysIn(month) {
  const [y, m] = month.split('-').map(Number);
  return new Date(Date.UTC(y, m, 0)).getUTCDate();
}

function dayLabel(date) {
  const [y, m, d] = date.split('-').map(Number);
  return new Date(Date.UTC(y, m - 1, d)).toLocaleDateString('en-US', { month: 'short', day: 'numeric', timeZone: 'UTC' });
}

/** A CSS class for a provider's colour (unknown providers share one). */
function providerClass(id) {
  return PROVIDERS.some((p) => p.id === id) ? `p-${id}` : 'p-other';
}

/** Providers that appear in the usage, in the dashboard's usual order, unknown ones last. */
function providersIn(usage) {
  const seen = new Set(Object.keys(usage.byProvider || {}));
  for (const d of usage.byDay || []) for (const p of Object.keys(d.byProvider || {})) seen.add(p);
  const known = PROVIDERS.map((p) => p.id).filter((id) => seen.has(id));
  return [...known, ...[...seen].filter((id) => !known.includes(id)).sort()];
}

function ratio(n) {
  return typeof n === 'number' && Number.isFinite(n)
    ? n.toLocaleString('en-US', { style: 'percent', maximumFractionDigits: 1 })
    : '—';
}

/** The dollar axis: a round step (1, 2 or 5 times a power of ten) and the top, a multiple of it
 *  at or above `max`, in about four steps. */
function axis(max) {
  if (!(max > 0)) return { step: 0.25, count: 4 };
  const rough = max / 4;
  const exp = 10 ** Math.floor(Math.log10(rough));
  const f = rough / exp;
  const step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * exp;
  return { step, count: Math.max(1, Math.ceil(max / step - 1e-9)) };
}

function axisUsd(v, step) {
  if (v === 0) return '$0';
  const digits = step >= 1 ? 0 : Math.max(2, -Math.floor(Math.log10(step)));
  return v.toLocaleString('en-US', { style: 'currency', currency: 'USD', notation: v >= 10000 ? 'compact' : 'standard', minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/**
 * The chart: one stacked bar per day with spend, one segment per provider with spend that day
 * (`rect[data-date][data-provider][data-cost]`, with a tooltip), a dollar axis and day labels.
 * Drawn at the container's width in pixels, so text keeps its size on a phone.
 */
function drawChart(usage, width) {
  const days = daysIn(usage.month);
  const top = 10;
  const bottom = 24;
  const left = 52;
  const right = 6;
  const plotW = Math.max(40, width - left - right);
  const plotH = CHART_HEIGHT - top - bottom;
  const providers = providersIn(usage);
  const max = Math.max(0, ...(usage.byDay || []).map((d) => d.costUsd || 0));
  const { step: yStep, count } = axis(max);
  const yMax = yStep * count;
  const base = top + plotH;
  const slot = plotW / days;
  const barW = Math.max(2, Math.min(28, slot * 0.7));
  const title = `Spend by day in ${monthLabel(usage.month)}, stacked by provider`;
  const busiest = (usage.byDay || []).reduce((a, d) => (!a || d.costUsd > a.costUsd ? d : a), null);
  const desc = busiest
    ? `${usd(usage.costUsd)} in all over ${usage.byDay.length} ${usage.byDay.length === 1 ? 'day' : 'days'} with spend; the most on ${dayLabel(busiest.date)}, ${usd(busiest.costUsd)}. The table below the chart has every figure.`
    : 'No spend this month.';

  const grid = [];
  for (let i = 0; i <= count; i++) {
    const y = base - (plotH * i) / count;
    grid.push(svg('line', { class: 'grid-line', x1: left, x2: left + plotW, y1: y, y2: y }));
    grid.push(svg('text', { class: 'axis-label', x: left - 6, y: y + 4, 'text-anchor': 'end' }, axisUsd(yStep * i, yStep)));
  }
  const step = [1, 2, 5, 7, 10, 15].find((s) => s * slot >= 26) || 15;
  const labels = [];
  for (let day = 1; day <= days; day++) {
    if (day !== 1 && day % step !== 0) continue;
    labels.push(svg('text', { class: 'axis-label', x: left + (day - 0.5) * slot, y: CHART_HEIGHT - 6, 'text-anchor': 'middle' }, String(day)));
  }
  const bars = [];
  for (const d of usage.byDay || []) {
    const day = Number(d.date.slice(8, 10));
    if (!(day >= 1 && day <= days)) continue;
    const x = left + (day - 1) * slot + (slot - barW) / 2;
    let cursor = base;
    const segments = [];
    for (const p of providers) {
      const cost = d.byProvider?.[p]?.costUsd;
      if (!(cost > 0)) continue;
      // A tiny amount still gets a visible pixel.
      const height = Math.max(1, (cost / yMax) * plotH);
      cursor -= height;
      segments.push(svg('rect', {
        class: `seg ${providerClass(p)}`, x: x.toFixed(2), y: cursor.toFixed(2), width: barW.toFixed(2), height: height.toFixed(2),
        'data-date': d.date, 'data-provider': p, 'data-cost': cost,
      }, svg('title', null, `${dayLabel(d.date)} · ${providerLabel(p)}: ${usd(cost)}`)));
    }
    bars.push(svg('g', { class: 'bar', 'data-date': d.date }, segments));
  }
  return svg('svg', {
    class: 'spend-svg', id: 'spend-svg', width, height: CHART_HEIGHT, viewBox: `0 0 ${width} ${CHART_HEIGHT}`,
    role: 'img', 'aria-labelledby': 'spend-svg-title spend-svg-desc',
  },
  svg('title', { id: 'spend-svg-title' }, title),
  svg('desc', { id: 'spend-svg-desc' }, desc),
  svg('g', { class: 'chart-grid', 'aria-hidden': 'true' }, grid, labels),
  svg('line', { class: 'axis-line', x1: left, x2: left + plotW, y1: base, y2: base, 'aria-hidden': 'true' }),
  svg('g', { class: 'chart-bars' }, bars));
}

/** The chart's figures as a table, for screen readers (the chart is an image to them). */
function chartTable(usage) {
  const providers = providersIn(usage);
  const columns = [
    { label: 'Day', cell: (d) => d.date },
    ...providers.map((p) => ({ label: providerLabel(p), class: 'num', cell: (d) => usd(d.byProvider?.[p]?.costUsd ?? 0) })),
    { label: 'Total', class: 'num', cell: (d) => usd(d.costUsd) },
  ];
  return h('div', { class: 'sr-only', id: 'spend-chart-table' },
    table(columns, usage.byDay || [], { caption: `Spend by day and provider, ${monthLabel(usage.month)}` }));
}

function legend(usage) {
  return h('ul', { class: 'legend', 'aria-label': 'Providers' }, providersIn(usage).map((p) => h('li', null,
    h('span', { class: ['swatch', providerClass(p)], 'aria-hidden': 'true' }), providerLabel(p))));
}

export async function mount(main, ctx) {
  const { api, org, isAdmin, query } = ctx;
  const asked = query.get('month') || '';
  const month = MONTH.test(asked) ? asked : '';

  fill(main, h('div', { class: 'page-head' },
    h('div', null, h('h1', null, 'Spend'),
      h('p', { class: 'muted' }, org ? ['What the agents of ', h('strong', null, org), ' cost, and the limits that hold them.'] : 'What an org\'s agents cost.'))));
  if (!org) {
    main.append(h('div', { class: 'alert info', role: 'status' }, 'Choose an org in the top bar to see its spend and budget.'));
    return;
  }

  const monthSelect = h('select', { id: 'spend-month', name: 'month', onchange: (e) => go(e.target.value) });
  const summaryBox = h('div', null, loading('Loading spend…'));
  const budgetBox = h('div', null, loading());
  const chartBox = h('div', null, loading());
  const providersBox = h('div', null, loading());
  const buildsBox = h('div', null, loading());
  main.querySelector('.page-head').append(h('span', { class: 'spacer' }),
    h('div', { class: 'field inline month-field' }, h('label', { for: 'spend-month' }, 'Month'), monthSelect));
  main.append(
    h('div', { class: 'spend-top section' },
      h('section', { class: 'card', 'aria-labelledby': 'spend-summary-title', id: 'spend-summary' },
        h('div', { class: 'card-head' }, h('h2', { id: 'spend-summary-title' }, 'Total')), summaryBox),
      h('section', { class: 'card', 'aria-labelledby': 'budget-title', id: 'budget-card' },
        h('div', { class: 'card-head' }, h('h2', { id: 'budget-title' }, 'Budget'),
          isAdmin ? null : h('span', { class: 'badge' }, 'read only')), budgetBox)),
    h('section', { class: 'card section', 'aria-labelledby': 'spend-chart-title' },
      h('div', { class: 'card-head' }, h('h2', { id: 'spend-chart-title' }, 'Spend by day')), chartBox),
    h('section', { class: 'card section', 'aria-labelledby': 'spend-providers-title' },
      h('div', { class: 'card-head' }, h('h2', { id: 'spend-providers-title' }, 'By provider')), providersBox),
    h('section', { class: 'card section', 'aria-labelledby': 'spend-builds-title' },
      h('div', { class: 'card-head' }, h('h2', { id: 'spend-builds-title' }, 'Cost per completed session and failure rate per build'),
        h('span', { class: 'muted small' }, 'sessions that ended in the month, by the build their runner ran')), buildsBox));

  let usage = null;
  let budget = null;
  let builds = new Map();
  let chartWidth = 0;

  function go(value) {
    ctx.navigate(value && value !== currentMonth() ? `/spend?month=${value}` : '/spend', { replace: true });
  }

  function renderMonths(shown) {
    const latest = [currentMonth(), shown].sort().pop();
    const months = [];
    for (let i = 0; i < MONTHS_BACK; i++) months.push(shiftMonth(latest, -i));
    if (!months.includes(shown)) months.push(shown);
    fill(monthSelect, months.map((m) => h('option', { value: m, selected: m === shown }, monthLabel(m))));
    monthSelect.value = shown;
  }

  // ---- total against the monthly budget ---------------------------------------------------
  function renderSummary() {
    if (!usage) return;
    const monthly = budget?.monthlyUsd;
    let gauge;
    if (typeof monthly === 'number') {
      const pct = monthly > 0 ? (usage.costUsd / monthly) * 100 : 100;
      gauge = meter(pct, `Monthly budget used: ${usd(usage.costUsd)} of ${usd(monthly)}`, { big: true, text: `${Math.round(pct)}% of ${usd(monthly)}` });
      gauge.id = 'spend-meter';
      gauge.classList.add('spend-meter');
    }
    const over = typeof monthly === 'number' && usage.costUsd >= monthly;
    // Not `patch`: morphing the meter would copy its width as a style attribute, which the
    // page's CSP refuses (styles are set through the CSSOM only).
    fill(summaryBox,
      h('div', { class: 'stat' },
        h('span', { class: 'label' }, `Spent in ${monthLabel(usage.month)}`),
        h('span', { class: 'value', id: 'spend-total', 'data-cost-usd': usage.costUsd }, usd(usage.costUsd))),
      gauge || h('p', { class: 'small muted', id: 'spend-no-budget' }, budget ? 'No monthly budget: the org\'s spend is not limited.' : ''),
      over ? h('p', { class: 'small over', role: 'status' }, usage.month === currentMonth()
        ? 'The monthly budget is reached: new sessions are refused until it is raised or the month ends.'
        : 'The monthly budget was reached.') : null,
      h('div', { class: 'grid cols-3 spend-figures' },
        h('div', { class: 'stat' }, h('span', { class: 'label' }, 'Sessions'), h('span', { class: 'value small-value', id: 'spend-sessions' }, number(usage.sessions))),
        h('div', { class: 'stat' }, h('span', { class: 'label' }, 'Tokens in'), h('span', { class: 'value small-value' }, number(usage.tokensIn))),
        h('div', { class: 'stat' }, h('span', { class: 'label' }, 'Tokens out'), h('span', { class: 'value small-value' }, number(usage.tokensOut)))));
  }

  // ---- chart -------------------------------------------------------------------------------
  const chartHolder = h('div', { class: 'spend-chart', id: 'spend-chart' });
  function renderChart() {
    if (!usage) return;
    if (!(usage.byDay || []).length) {
      patch(chartBox, h('div', { id: 'spend-empty' }, empty(`No spend in ${monthLabel(usage.month)}.`,
        'Costs appear here as runners report what their sessions use.')));
      return;
    }
    if (chartHolder.parentNode !== chartBox) fill(chartBox, legend(usage), chartHolder, chartTable(usage));
    else {
      chartBox.firstChild.replaceWith(legend(usage));
      chartBox.lastChild.replaceWith(chartTable(usage));
    }
    chartWidth = Math.floor(chartHolder.clientWidth) || 640;
    fill(chartHolder, drawChart(usage, chartWidth));
  }
  const resize = new ResizeObserver(() => {
    if (!usage || chartHolder.parentNode !== chartBox) return;
    const width = Math.floor(chartHolder.clientWidth);
    if (width && Math.abs(width - chartWidth) >= 1) {
      chartWidth = width;
      fill(chartHolder, drawChart(usage, width));
    }
  });
  resize.observe(chartHolder);
  ctx.cleanup(() => resize.disconnect());

  // ---- by provider -------------------------------------------------------------------------
  function renderProviders() {
    if (!usage) return;
    const rows = providersIn(usage).map((id) => ({ id, ...(usage.byProvider?.[id] || {}) }));
    if (!rows.length) {
      patch(providersBox, h('p', { class: 'muted small' }, 'No provider was used this month.'));
      return;
    }
    patch(providersBox, h('div', { id: 'spend-providers' }, table([
      { label: 'Provider', cell: (r) => h('span', { class: 'row nowrap' }, h('span', { class: ['swatch', providerClass(r.id)], 'aria-hidden': 'true' }), providerLabel(r.id)) },
      { label: 'Cost', class: 'num', cell: (r) => h('span', { 'data-cost-usd': r.costUsd ?? 0 }, usd(r.costUsd ?? 0)) },
      { label: 'Share', class: 'num', cell: (r) => (usage.costUsd > 0 ? ratio((r.costUsd ?? 0) / usage.costUsd) : '—') },
      { label: 'Sessions', class: 'num', cell: (r) => number(r.sessions ?? 0) },
      { label: 'Tokens in', class: 'num', cell: (r) => number(r.tokensIn ?? 0) },
      { label: 'Tokens out', class: 'num', cell: (r) => number(r.tokensOut ?? 0) },
    ], rows, { caption: `Spend by provider, ${monthLabel(usage.month)}`, rowAttrs: (r) => ({ 'data-provider-id': r.id }) })));
  }

  // ---- by build ----------------------------------------------------------------------------
  function renderBuilds() {
    if (!usage) return;
    const rows = usage.byBuild || [];
    if (!rows.length) {
      patch(buildsBox, h('p', { class: 'muted small', id: 'spend-builds-empty' }, 'No session ended on a runner in this month.'));
      return;
    }
    patch(buildsBox, h('div', { id: 'spend-builds' }, table([
      { label: 'Build', cell: (r) => h('div', null, h('strong', { class: 'mono nowrap' }, r.buildId || 'unknown'),
        builds.get(r.buildId)?.runnerVersion ? h('div', { class: 'small muted' }, `runner ${builds.get(r.buildId).runnerVersion}`) : null) },
      { label: 'Bundles', cell: (r) => {
        const versions = Object.entries(builds.get(r.buildId)?.runtimeVersions || {});
        return versions.length ? h('div', { class: 'versions' }, versions.map(([p, v]) => h('code', { 'data-provider': p }, `${p} ${v}`))) : h('span', { class: 'muted' }, '—');
      } },
      { label: 'Sessions', class: 'num', cell: (r) => number(r.sessions) },
      { label: 'Completed', class: 'num', cell: (r) => number(r.completed) },
      { label: 'Failed', class: 'num', cell: (r) => number(r.failed) },
      { label: 'Failure rate', class: 'num', cell: (r) => h('span', { 'data-failure-rate': r.failureRate ?? '' }, ratio(r.failureRate)) },
      { label: 'Cost per completed', class: 'num', cell: (r) => h('span', { 'data-cost-per-completed': r.costPerCompletedUsd ?? '' }, typeof r.costPerCompletedUsd === 'number' ? usd(r.costPerCompletedUsd) : '—') },
      { label: 'Cost', class: 'num', cell: (r) => usd(r.costUsd) },
    ], rows, { caption: `Cost and failures by build, ${monthLabel(usage.month)}`, rowAttrs: (r) => ({ 'data-build-id': r.buildId }) })));
  }

  /** The builds named in the usage that are not known yet (versions they bundle). */
  async function loadBuilds() {
    const wanted = (usage?.byBuild || []).map((b) => b.buildId).filter((id) => id && !builds.has(id));
    if (!wanted.length) return;
    try {
      const page = await api.get('/builds', { pageSize: 100 });
      for (const b of page.items) builds.set(b.buildId, b);
      await Promise.all(wanted.filter((id) => !builds.has(id)).map((id) => api.get(`/builds/${encodeURIComponent(id)}`)
        .then((b) => builds.set(id, b))
        .catch(() => builds.set(id, null))));
    } catch {
      // Without the pipeline the table shows build ids only.
      for (const id of wanted) if (!builds.has(id)) builds.set(id, null);
    }
  }

  async function loadUsage() {
    try {
      usage = await api.get(usagePath(org), { month });
      renderMonths(usage.month || month || currentMonth());
      await loadBuilds();
      renderSummary();
      renderChart();
      renderProviders();
      renderBuilds();
    } catch (e) {
      usage = null;
      renderMonths(month || currentMonth());
      fill(summaryBox, errorBox(e, 'Spend could not be loaded'));
      fill(chartBox);
      fill(providersBox);
      fill(buildsBox);
    }
  }

  // ---- budget ------------------------------------------------------------------------------
  function renderBudget() {
    if (!isAdmin) {
      fill(budgetBox,
        h('dl', { class: 'kv', id: 'budget-readonly' }, LIMITS.map((l) => [
          h('dt', null, l.label), h('dd', { 'data-limit': l.key }, limitText(l.key, budget[l.key]))])),
        h('p', { class: 'small muted' }, 'Only admins change the budget.'));
      return;
    }
    const inputs = {};
    const errors = {};
    const formError = h('div', { id: 'budget-error', 'aria-live': 'assertive' });
    const status = h('span', { id: 'budget-status', class: 'small muted', role: 'status' });
    const save = h('button', { class: 'btn primary', type: 'submit', id: 'budget-save' }, 'Save budget');
    const fields = LIMITS.map((l) => {
      const id = `budget-${l.key}`;
      inputs[l.key] = h('input', {
        id, name: l.key, type: 'text', inputMode: l.unit === 'tokens' ? 'numeric' : 'decimal', autocomplete: 'off',
        placeholder: 'No limit', value: typeof budget[l.key] === 'number' ? String(budget[l.key]) : '',
        'aria-describedby': `${id}-error ${id}-hint`,
      });
      errors[l.key] = h('span', { class: 'error', id: `${id}-error`, 'data-error-for': l.key });
      return h('div', { class: 'field', 'data-field': l.key },
        h('label', { for: id }, l.unit === 'tokens' ? `${l.label}` : `${l.label} (USD)`),
        inputs[l.key],
        h('span', { class: 'hint', id: `${id}-hint` }, l.hint),
        errors[l.key]);
    });
    const form = h('form', { id: 'budget-form', novalidate: true },
      formError,
      h('div', { class: 'budget-fields' }, fields),
      h('p', { class: 'small muted' }, 'Empty means no limit. Raising a limit does not resume paused sessions: resume them from the ',
        h('a', { href: '/' }, 'overview'), '.'),
      h('div', { class: 'form-actions' }, save, status));
    form.addEventListener('input', () => { status.textContent = 'Unsaved changes'; });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      fill(formError);
      for (const l of LIMITS) {
        errors[l.key].textContent = '';
        inputs[l.key].removeAttribute('aria-invalid');
      }
      // Validation is the API's: what was typed is sent (a number when it reads as one).
      const body = {};
      for (const l of LIMITS) {
        const text = inputs[l.key].value.trim();
        const n = Number(text);
        body[l.key] = text === '' ? null : Number.isFinite(n) ? n : text;
      }
      save.disabled = true;
      status.textContent = 'Saving…';
      try {
        budget = limitsOf(await api.put(budgetPath(org), body));
        for (const l of LIMITS) inputs[l.key].value = typeof budget[l.key] === 'number' ? String(budget[l.key]) : '';
        status.textContent = 'Saved.';
        toast(`Budget of ${org} saved.`);
        renderSummary();
      } catch (err) {
        status.textContent = 'Not saved.';
        const unplaced = [];
        let first = null;
        for (const issue of err.issues || []) {
          const key = LIMITS.map((l) => l.key).find((k) => issue.path === k || issue.path?.endsWith(`.${k}`) || issue.path?.startsWith(`${k}.`));
          if (!key) {
            unplaced.push(issue);
            continue;
          }
          errors[key].textContent = errors[key].textContent ? `${errors[key].textContent} ${issue.message}` : capitalize(issue.message);
          inputs[key].setAttribute('aria-invalid', 'true');
          first = first || inputs[key];
        }
        if (unplaced.length || !first) fill(formError, errorBox({ message: err.message, issues: unplaced }, 'The budget was not saved'));
        (first || formError).focus?.();
      } finally {
        save.disabled = false;
      }
    });
    fill(budgetBox, form);
  }

  async function loadBudget() {
    try {
      budget = limitsOf(await api.get(budgetPath(org)));
      renderBudget();
    } catch (e) {
      budget = null;
      fill(budgetBox, errorBox(e, 'The budget could not be loaded'));
    }
  }

  const reload = debounce(loadUsage, 500);
  ctx.cleanup(reload.cancel);
  ctx.onFrame((f) => {
    if (f.type === 'session' || (f.type === 'event' && (f.event === 'budget_reached' || f.event === 'session_created'))) reload();
  });
  ctx.onResync(() => { loadUsage(); });

  renderMonths(month || currentMonth());
  // The budget first: the total's meter is drawn against it.
  await loadBudget();
  await loadUsage();
}

function capitalize(s) {
  return s ? s.charAt(0).toUpperCase() + s.slice(1) : s;
}
