// The console's one way to the API: same-origin calls to /console/api/…, which the service
// answers with the API's own handlers, holding the session in an HttpOnly cookie that no
// script here can read. Every call carries X-FinSec-Console (the service refuses a call that
// changes anything without it: a page of another site cannot send it) and reads the API's
// one error shape, {"error", "code"}, into an ApiError.

const SIGNED_OUT = ['missing_token', 'invalid_token', 'token_expired', 'session_ended', 'invalid_admin_key'];

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  /** The session (or the operator's pass) is over: the page goes back to its sign-in. (A
   * wrong password or code is a 401 too, and leaves the session be.) */
  get signedOut() {
    return this.status === 401 && SIGNED_OUT.includes(this.code);
  }
}

async function call(method, path, body) {
  const init = {
    method,
    credentials: 'same-origin',
    cache: 'no-store',
    headers: { 'X-FinSec-Console': '1', Accept: 'application/json' },
  };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`/console/api/${path}`, init);
  } catch {
    throw new ApiError(0, 'network', 'The service could not be reached. Check your connection and try again.', null);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const retryAfter = Number.parseInt(response.headers.get('Retry-After') ?? '', 10);
    throw new ApiError(
      response.status,
      data?.code ?? 'unknown',
      data?.error ?? `The request failed (${response.status}).`,
      Number.isFinite(retryAfter) ? retryAfter : null,
    );
  }
  return data;
}

export const get = (path) => call('GET', path);
export const post = (path, body = {}) => call('POST', path, body);
export const del = (path) => call('DELETE', path);
