// The dashboard stream (docs/api.md, section 10): one WebSocket per tab. It authenticates with a first
// `authenticate` frame (a token in the URL would end up in logs), follows the chosen org, and
// keeps per-session subscriptions. When the socket drops it reconnects with backoff, subscribes
// again, and asks for terminal output after the last sequence number it has shown, so nothing
// is lost or shown twice; views hear `resync` and reload what they show.

const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 15000;

export class Stream extends EventTarget {
  constructor(token) {
    super();
    this.token = token;
    this.org = null;
    this.ws = null;
    this.state = 'connecting';
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
    this.nextId = 1;
    /** messageId of the pending `authenticate` frame. */
    this.authId = null;
    this.everConnected = false;
    /** sessionId → {lastSeq, listeners:Set} */
    this.sessions = new Map();
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000, 'signed out');
      this.ws = null;
    }
    this.setState('offline');
  }

  setState(state, detail) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('status', { detail: { state, ...detail } }));
  }

  /** Follows `org` (session, approval and runner events). Orgs cannot be unsubscribed, so a
   *  change of org opens a fresh connection. */
  setOrg(org) {
    if (org === this.org) return;
    const had = this.org;
    this.org = org || null;
    if (this.state !== 'live') return;
    if (had) this.reconnectNow();
    else if (this.org) this.send({ type: 'subscribe_org', orgId: this.org });
  }

  reconnectNow() {
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000, 'changing org');
      this.ws = null;
    }
    this.attempt = 0;
    this.open();
  }

  open() {
    clearTimeout(this.timer);
    this.setState(this.everConnected ? 'reconnecting' : 'connecting');
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/api/v1/ws`;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.authId = String(this.nextId);
      this.send({ type: 'authenticate', token: this.token });
    };
    ws.onmessage = (m) => {
      let frame;
      try {
        frame = JSON.parse(m.data);
      } catch {
        return;
      }
      this.onFrame(frame);
    };
    ws.onclose = (e) => {
      this.ws = null;
      if (this.stopped) return;
      if (e.code === 1008 && /revoked/i.test(e.reason)) {
        this.refused('Your token was revoked. Sign in with another token.');
        return;
      }
      this.scheduleReconnect(e.code === 1008 && /limit/i.test(e.reason) ? 5 : 0);
    };
  }

  scheduleReconnect(extraSteps = 0) {
    if (this.stopped) return;
    this.attempt += 1 + extraSteps;
    const base = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** (this.attempt - 1));
    const delay = base / 2 + Math.random() * base / 2;
    this.setState('reconnecting', { retryInMs: delay });
    this.timer = setTimeout(() => this.open(), delay);
  }

  refused(message) {
    this.stop();
    this.dispatchEvent(new CustomEvent('unauthorized', { detail: { message } }));
  }

  /** Sends a frame; until the socket is authenticated only `authenticate` goes out (the rest
   *  is sent again from our own state once it is). */
  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    if (frame.type !== 'authenticate' && this.state !== 'live') return false;
    this.ws.send(JSON.stringify({ ...frame, messageId: String(this.nextId++) }));
    return true;
  }

  onFrame(frame) {
    switch (frame.type) {
      case 'event':
        if (frame.event === 'authenticated') return this.onAuthenticated();
        break;
      case 'error':
        if (frame.code === 'UNAUTHORIZED' && frame.messageId === this.authId) {
          this.refused('This token is no longer accepted: it was revoked or is not valid. Sign in again.');
          return;
        }
        if (frame.code === 'CONNECTION_LIMIT') {
          this.setState('reconnecting', { reason: 'Too many dashboards are open with this token; retrying.' });
        }
        break;
      case 'terminal': {
        const sub = this.sessions.get(frame.sessionId);
        if (!sub || frame.seq <= sub.lastSeq) return; // already shown
        sub.lastSeq = frame.seq;
        for (const fn of sub.listeners) fn(frame);
        return;
      }
      default:
        break;
    }
    this.dispatchEvent(new CustomEvent('frame', { detail: frame }));
  }

  onAuthenticated() {
    const reconnected = this.everConnected;
    this.everConnected = true;
    this.attempt = 0;
    this.setState('live');
    if (this.org) this.send({ type: 'subscribe_org', orgId: this.org });
    for (const [sessionId, sub] of this.sessions) {
      this.send({ type: 'subscribe_session', sessionId, afterSeq: sub.lastSeq });
    }
    if (reconnected) this.dispatchEvent(new CustomEvent('resync'));
  }

  /** Streams a session's terminal output from after `afterSeq`; returns the unsubscribe. */
  subscribeSession(sessionId, onOutput, afterSeq = 0) {
    let sub = this.sessions.get(sessionId);
    if (!sub) {
      sub = { lastSeq: afterSeq, listeners: new Set() };
      this.sessions.set(sessionId, sub);
      this.send({ type: 'subscribe_session', sessionId, afterSeq: sub.lastSeq });
    }
    sub.listeners.add(onOutput);
    return () => {
      sub.listeners.delete(onOutput);
      if (sub.listeners.size === 0) {
        this.sessions.delete(sessionId);
        this.send({ type: 'unsubscribe_session', sessionId });
      }
    };
  }

  /** Sends keystrokes to the session's runner. */
  input(sessionId, data) {
    return this.send({ type: 'terminal_input', sessionId, data });
  }

  /** Adds a listener for frames; returns its removal. */
  onFrameOf(fn) {
    const handler = (e) => fn(e.detail);
    this.addEventListener('frame', handler);
    return () => this.removeEventListener('frame', handler);
  }
}
