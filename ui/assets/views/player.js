// A session's recording, played back: `GET /sessions/{id}/recording` (asciicast v2, not
// enveloped) in a terminal of its own, with play/pause, 1×/2×/8×, a seek bar whose ticks are the
// timeline's markers (approvals stand out), "Next approval", and the time. Seeking resets the
// terminal and writes everything printed up to that time at once. A live session's recording is
// what was stored when it was loaded; "Reload" takes what came since.
import { fittedTerminal } from './terminal.js';
import { errorBox, fill, h, loading, toast } from '../dom.js';

const SPEEDS = [1, 2, 8];
/** How often playback moves on while playing (ms). */
const TICK_MS = 50;

/** An asciicast v2 file: its header, output lines `{t, data}` and markers `{t, label}`. */
export function parseCast(text) {
  const rows = text.split('\n');
  const header = JSON.parse(rows[0]);
  if (header?.version !== 2) throw new Error('This is not an asciicast v2 recording.');
  const output = [];
  const markers = [];
  for (const row of rows.slice(1)) {
    if (!row.trim()) continue;
    const [t, code, data] = JSON.parse(row);
    if (code === 'o') output.push({ t, data });
    else if (code === 'm') markers.push({ t, label: data, approval: data.startsWith('approval') });
  }
  const duration = Math.max(output.at(-1)?.t ?? 0, markers.at(-1)?.t ?? 0);
  return { header, output, markers, duration };
}

/** `m:ss.s` (or `h:mm:ss.s`) for a time in seconds. */
export function clock(seconds) {
  const tenths = Math.floor(seconds * 10 + 1e-6);
  const s = Math.floor(tenths / 10);
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const rest = `${String(s % 60).padStart(2, '0')}.${tenths % 10}`;
  return hours ? `${hours}:${String(minutes).padStart(2, '0')}:${rest}` : `${minutes}:${rest}`;
}

/** The "Recording" card of a session page; the recording loads when it is opened. */
export function recordingCard(ctx, sessionId) {
  const body = h('div', { class: 'player-body', id: 'player' });
  const openButton = h('button', { class: 'btn', type: 'button', id: 'recording-open', onclick: () => open() }, 'Open player');
  fill(body, h('p', { class: 'muted small player-intro' }, 'Replay what this session printed, with its approvals and state changes marked on the time line.'), openButton);

  let player = null;
  ctx.cleanup(() => player?.dispose());

  async function open(resumeAt) {
    let cast;
    const keep = player;
    if (!keep) fill(body, loading('Loading the recording…'));
    try {
      cast = parseCast(await ctx.api.text(`/sessions/${sessionId}/recording`));
    } catch (e) {
      if (keep) {
        toast(e.message, 'bad');
        return;
      }
      fill(body, errorBox(e, 'The recording could not be loaded'), openButton);
      return;
    }
    player?.dispose();
    player = makePlayer(cast, body, () => open(player?.position()));
    if (resumeAt !== undefined) player.seek(resumeAt);
  }

  return h('section', { class: 'card terminal-card', 'aria-labelledby': 'recording-title', id: 'recording-card' },
    h('div', { class: 'card-head' }, h('h2', { id: 'recording-title' }, 'Recording')),
    body);
}

function makePlayer(cast, body, reload) {
  const { output, markers, duration } = cast;
  const approvals = markers.filter((m) => m.approval);
  let position = 0;
  let cursor = 0;
  let playing = false;
  let speed = 1;
  let timer = null;
  let lastTick = 0;
  // The last approval marker at or before the position ("Next approval" goes past it).
  let lastApproval = -1;

  const playButton = h('button', { class: 'btn primary small', type: 'button', id: 'player-play', onclick: () => (playing ? pause() : play()) }, 'Play');
  const speedButtons = SPEEDS.map((s) => h('button', {
    class: 'btn small', type: 'button', id: `player-speed-${s}`, 'aria-pressed': s === speed ? 'true' : 'false',
    onclick: () => setSpeed(s),
  }, `${s}×`));
  const nextButton = h('button', {
    class: 'btn small', type: 'button', id: 'player-next-approval', disabled: approvals.length === 0,
    title: approvals.length ? 'Jump to the next approval' : 'No approvals in this recording',
    onclick: () => nextApproval(),
  }, 'Next approval');
  const reloadButton = h('button', { class: 'btn small', type: 'button', id: 'player-reload', title: 'Load what was recorded since', onclick: () => reload() }, 'Reload');
  const timeLabel = h('span', { class: 'mono small player-time', id: 'player-time', 'aria-live': 'off' });
  const seekBar = h('input', {
    type: 'range', id: 'player-seek', min: '0', max: String(Math.round(duration * 1000)), step: '1', value: '0',
    'aria-label': 'Position in the recording',
    oninput: (e) => seek(Number(e.target.value) / 1000),
  });
  const ticks = h('div', { class: 'player-ticks', id: 'player-ticks', 'aria-hidden': 'true' },
    markers.map((m) => h('span', {
      class: ['tick', m.approval ? 'tick-approval' : null],
      title: `${clock(m.t)} ${m.label}`,
      'data-t': m.t,
      style: { left: `${duration > 0 ? (m.t / duration) * 100 : 0}%` },
    })));
  const markerLabel = h('p', { class: 'small muted player-marker', id: 'player-marker' });
  const termBox = h('div', { class: 'term-box player-term', id: 'player-terminal', role: 'region', 'aria-label': 'Recording terminal' });

  fill(body,
    h('div', { class: 'row player-bar' },
      playButton,
      h('span', { class: 'row player-speeds', role: 'group', 'aria-label': 'Speed' }, speedButtons),
      nextButton, reloadButton, h('span', { class: 'spacer' }), timeLabel),
    h('div', { class: 'player-seek' }, seekBar, ticks),
    markerLabel,
    termBox);

  const { term, dispose: disposeTerminal } = fittedTerminal(termBox, { input: false });

  function writeUpTo(t) {
    let text = '';
    while (cursor < output.length && output[cursor].t <= t) text += output[cursor++].data;
    if (text) term.write(text);
    while (lastApproval + 1 < approvals.length && approvals[lastApproval + 1].t <= t) lastApproval++;
  }

  function seek(t) {
    position = Math.min(Math.max(0, t), duration);
    term.reset();
    cursor = 0;
    lastApproval = -1;
    writeUpTo(position);
    lastTick = performance.now();
    show();
  }

  function tick() {
    const now = performance.now();
    position = Math.min(duration, position + ((now - lastTick) / 1000) * speed);
    lastTick = now;
    writeUpTo(position);
    if (position >= duration) pause();
    else show();
  }

  function play() {
    if (position >= duration) seek(0);
    playing = true;
    lastTick = performance.now();
    clearInterval(timer);
    timer = setInterval(tick, TICK_MS);
    show();
  }

  function pause() {
    playing = false;
    clearInterval(timer);
    timer = null;
    show();
  }

  function setSpeed(s) {
    speed = s;
    for (const [i, b] of speedButtons.entries()) b.setAttribute('aria-pressed', SPEEDS[i] === s ? 'true' : 'false');
    body.dataset.speed = String(s);
  }

  function nextApproval() {
    const next = approvals[lastApproval + 1];
    if (!next) {
      toast('No approval after this point of the recording.');
      return;
    }
    const index = lastApproval + 1;
    seek(next.t);
    // Several approvals at the same moment: each press moves to the next of them.
    lastApproval = index;
    show();
  }

  function show() {
    seekBar.value = String(Math.round(position * 1000));
    timeLabel.textContent = `${clock(position)} / ${clock(duration)}`;
    playButton.textContent = playing ? 'Pause' : 'Play';
    playButton.setAttribute('aria-pressed', playing ? 'true' : 'false');
    let current = null;
    for (const m of markers) {
      if (m.t > position) break;
      current = m;
    }
    if (lastApproval >= 0 && approvals[lastApproval].t === position) current = approvals[lastApproval];
    markerLabel.textContent = current ? `${clock(current.t)} ${current.label}` : 'No marker yet';
    markerLabel.dataset.approval = current?.approval ? 'true' : 'false';
    body.dataset.position = String(position);
    body.dataset.duration = String(duration);
    body.dataset.playing = String(playing);
  }

  setSpeed(1);
  show();
  body.dataset.ready = 'true';

  return {
    seek,
    position: () => position,
    dispose() {
      pause();
      disposeTerminal();
    },
  };
}
