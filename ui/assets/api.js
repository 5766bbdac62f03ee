// The REST client: every call sends the signed-in token and unwraps the envelope. Failures
// become ApiError with the server's code, message and per-field issues, or a plain sentence
// when the server could not be reached.

const TOKEN_KEY = 'village.token';

export class ApiError extends Error {
  constructor(status, code, message, issues = [], details = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.issues = issues;
    this.details = details;
  }
}

export function storedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

export function storeToken(token) {
  localStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  localStorage.removeItem(TOKEN_KEY);
}

const listeners = new Set();

/** Called with the error when the server refuses the token (401): it was revoked. */
export function onUnauthorized(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** Makes a query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/**
 * One call. `token` overrides the stored one (sign-in checks a token before keeping it).
 * `anonymous` sends no token at all: an approval link is its own credential, and whoever opens
 * one may not be signed in, or signed in as someone else.
 */
export async function request(method, path, body, { token, anonymous = false } = {}) {
  const headers = { Accept: 'application/json' };
  const bearer = anonymous ? '' : token ?? storedToken();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`/api/v1${path}`, init);
  } catch {
    throw new ApiError(0, 'NETWORK', 'The Village server cannot be reached. Check that it is running and your connection.');
  }
  let envelope = null;
  try {
    envelope = await response.json();
  } catch {
    envelope = null;
  }
  if (envelope && envelope.success) return envelope.data;
  const e = envelope?.error;
  const err = e
    ? new ApiError(response.status, e.code, e.message, e.details?.issues || [], e.details || null)
    : new ApiError(response.status, 'HTTP_' + response.status, `The server answered ${response.status} ${response.statusText || ''}`.trim());
  if (response.status === 401 && token === undefined && !anonymous) for (const fn of listeners) fn(err);
  return Promise.reject(err);
}

/**
 * A response that is not enveloped (a session's recording): its body as text when it succeeds.
 * A failure is answered in the envelope and becomes an ApiError, as with `request`.
 */
export async function requestText(path, { token } = {}) {
  const headers = {};
  const bearer = token ?? storedToken();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  let response;
  try {
    response = await fetch(`/api/v1${path}`, { headers, cache: 'no-store' });
  } catch {
    throw new ApiError(0, 'NETWORK', 'The Village server cannot be reached. Check that it is running and your connection.');
  }
  if (response.ok) return response.text();
  let e = null;
  try {
    e = (await response.json())?.error;
  } catch {
    e = null;
  }
  const err = e
    ? new ApiError(response.status, e.code, e.message, e.details?.issues || [], e.details || null)
    : new ApiError(response.status, 'HTTP_' + response.status, `The server answered ${response.status} ${response.statusText || ''}`.trim());
  if (response.status === 401 && token === undefined) for (const fn of listeners) fn(err);
  throw err;
}

export const api = {
  get: (path, params) => request('GET', path + query(params)),
  post: (path, body) => request('POST', path, body),
  put: (path, body) => request('PUT', path, body),
  del: (path, params) => request('DELETE', path + query(params)),
  text: (path, params) => requestText(path + query(params)),
};
