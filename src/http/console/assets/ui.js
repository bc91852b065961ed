// Small DOM helpers shared by both pages. Everything is built node by node and text is only
// ever set as text: the pages never parse HTML (the Content-Security-Policy requires Trusted
// Types, so a string cannot become markup even by mistake).

/** An element: `attrs` are attributes (`text` sets its text), `children` nodes or strings. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'text') node.textContent = value;
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

export const byId = (id) => document.getElementById(id);

/** Shows exactly one of the page's top-level views. */
export function showView(id) {
  for (const view of document.querySelectorAll('[data-view]')) {
    view.hidden = view.id !== id;
  }
  const heading = byId(id)?.querySelector('h1');
  if (heading) {
    heading.setAttribute('tabindex', '-1');
    heading.focus();
  }
}

/** "just now", "3 minutes ago", "2 hours ago", "5 days ago". */
export function ago(iso, now = Date.now()) {
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  const units = [
    ['day', 86400],
    ['hour', 3600],
    ['minute', 60],
  ];
  for (const [unit, size] of units) {
    const n = Math.floor(seconds / size);
    if (n >= 1) return `${n} ${unit}${n === 1 ? '' : 's'} ago`;
  }
  return 'just now';
}

/** A time in the reader's locale, to the minute. */
export function when(iso) {
  return new Date(iso).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/** A wait in seconds, in words. */
export function wait(seconds) {
  if (seconds >= 120) return `${Math.ceil(seconds / 60)} minutes`;
  return `${seconds} second${seconds === 1 ? '' : 's'}`;
}

/** What an error says to a person; a refusal that says how long to wait says it in words. */
const WAITS = {
  throttled: 'Too many failed attempts for this account.',
  rate_limited: 'Too many requests from this device.',
  busy: 'The service is busy.',
};

export function describe(error) {
  if (error?.retryAfter && WAITS[error.code]) {
    return `${WAITS[error.code]} Try again in ${wait(error.retryAfter)}.`;
  }
  return error?.message ?? String(error);
}

/**
 * Runs `handler(form, submitter)` on submit, never letting the browser submit the form itself.
 * While it runs the form's buttons are disabled; its error goes to the form's alert.
 */
export function onSubmit(form, handler, onError) {
  // An error is about what was sent: it goes as soon as the form is edited.
  form.addEventListener('input', () => {
    const alert = form.querySelector('[role=alert]');
    if (alert) alert.textContent = '';
  });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const alert = form.querySelector('[role=alert]');
    if (alert) alert.textContent = '';
    const buttons = [...form.querySelectorAll('button')];
    buttons.forEach((b) => (b.disabled = true));
    try {
      await handler(form, event.submitter);
    } catch (error) {
      if (!onError(error) && alert) alert.textContent = describe(error);
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  });
}

/** Puts `text` in the status or alert element `id` and moves focus there, so that a
 * keyboard or screen-reader user lands on what happened (the control they used may be gone). */
export function announce(id, text) {
  const target = byId(id);
  target.textContent = text;
  if (!text) return;
  target.setAttribute('tabindex', '-1');
  target.focus();
}

/** Runs `action` with `button` disabled: a second click cannot send it twice. */
export async function whileDisabled(button, action) {
  if (button.disabled) return;
  button.disabled = true;
  try {
    await action();
  } finally {
    button.disabled = false;
  }
}

/** Enter in this form's fields presses none of its buttons: where each button does something
 * different (and some cannot be undone), each takes its own click. */
export function noImplicitSubmit(form) {
  for (const field of form.querySelectorAll('input')) {
    field.addEventListener('keydown', (event) => {
      if (event.key === 'Enter') event.preventDefault();
    });
  }
}

/** Offers `text` as a file download. */
export function download(filename, text) {
  const url = URL.createObjectURL(new Blob([text], { type: 'text/plain' }));
  const link = el('a', { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** A live session as a list item: device, address, signed-in and last-active times, then
 * `trailing` (a badge or a button) when given. */
export function sessionItem(session, trailing = null) {
  return el(
    'li',
    { class: 'device', 'data-session-id': session.id, 'data-current': session.current ? 'true' : 'false' },
    el('span', { class: 'what', text: session.device }),
    el('span', { class: 'where', text: session.ip ?? 'Unknown address' }),
    el(
      'span',
      { class: 'times' },
      'Signed in ',
      el('time', { datetime: session.created_at, text: when(session.created_at) }),
      ' · Active ',
      el('time', { datetime: session.last_seen_at, title: when(session.last_seen_at), text: ago(session.last_seen_at) }),
    ),
    trailing,
  );
}

/** Events as people read them. */
export const EVENT_TEXT = {
  login_succeeded: 'Signed in',
  password_verified: 'Password accepted, second factor asked',
  login_failed: 'Failed sign-in',
  login_throttled: 'Sign-ins paused after too many failures',
  mfa_succeeded: 'Signed in with two-factor code',
  mfa_failed: 'Wrong two-factor code',
  recovery_code_used: 'Signed in with a recovery code',
  session_ended: 'Signed out',
  password_changed: 'Password changed',
  mfa_setup_started: 'Two-factor setup started',
  mfa_enabled: 'Two-factor turned on',
  mfa_disabled: 'Two-factor turned off',
  recovery_codes_regenerated: 'New recovery codes made',
  account_deactivated: 'Account deactivated',
  account_activated: 'Account reactivated',
};

/** Why a session ended, in words. */
const ENDED = {
  logout: 'signed out',
  logout_all: 'signed out of all devices',
  admin: 'by support',
  idle_timeout: 'idle too long',
  max_lifetime: 'expired',
  password_changed: 'password changed',
  mfa_changed: 'two-factor changed',
  account_disabled: 'account deactivated',
  session_limit: 'too many devices',
};

/** An event as a list item: what, when, from where (and the operator's note for staff). */
export function eventItem(event) {
  let what = EVENT_TEXT[event.kind] ?? event.kind;
  if (event.kind === 'session_ended' && event.reason) what += ` (${ENDED[event.reason] ?? event.reason})`;
  else if (event.reason && event.outcome === 'failure') what += ` (${event.reason.replaceAll('_', ' ')})`;
  if (event.initiator === 'operator' && event.kind !== 'session_ended') what += ' by support';
  const where = [event.ip, event.note ? `note: ${event.note}` : null].filter(Boolean).join(' · ');
  return el(
    'li',
    { class: event.outcome === 'failure' ? 'event failure' : 'event' },
    el('span', { class: 'what', text: what }),
    el('time', { datetime: event.at, title: when(event.at), text: ago(event.at) }),
    where ? el('span', { class: 'where', text: where }) : null,
  );
}
