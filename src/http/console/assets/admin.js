// /admin/: support staff's console. The admin key is sent once, to be exchanged for an
// operator's pass in an HttpOnly cookie (the key is cleared from the form at once and kept
// nowhere). Then: find a customer by email, see their live sessions and recent events, sign
// them out of everything with a reason, deactivate or reactivate the account.

import { ApiError, del, get, post } from './api.js';
import {
  announce, byId, describe, el, eventItem, noImplicitSubmit, onSubmit, sessionItem, showView, when,
  whileDisabled,
} from './ui.js';

let customer = null;

function signedOut(error) {
  if (error instanceof ApiError && error.signedOut) {
    showSignIn('Your console session has ended. Sign in again with the admin key.');
    return true;
  }
  return false;
}

/** The sign-in form, with nothing of the last customer left on the page. */
function showSignIn(notice = '', error = '') {
  customer = null;
  byId('customer').hidden = true;
  byId('sign-out').hidden = true;
  for (const id of ['customer-sessions', 'customer-events']) byId(id).replaceChildren();
  for (const id of ['console-notice', 'console-error']) byId(id).textContent = '';
  for (const field of document.querySelectorAll('input')) field.value = '';
  showView('sign-in');
  // Set once shown: a live region inside a hidden view is not announced.
  byId('sign-in-notice').textContent = notice;
  byId('sign-in-form').querySelector('[role=alert]').textContent = error;
}

function showConsole() {
  byId('sign-out').hidden = false;
  showView('console');
}

async function showCustomer(user) {
  customer = user;
  const base = `admin/users/${encodeURIComponent(user.id)}`;
  const [{ sessions }, { events }] = await Promise.all([
    get(`${base}/sessions`),
    get(`${base}/events?limit=20`),
  ]);
  byId('customer-name').textContent = `${user.first_name} ${user.last_name}`;
  byId('customer-email').textContent = user.email;
  byId('customer-status').textContent = user.is_active ? 'Active' : 'Deactivated';
  byId('customer-mfa').textContent = user.mfa_enabled ? 'On' : 'Off';
  byId('customer-since').textContent = when(user.created_at);
  byId('customer-sessions').replaceChildren(
    ...(sessions.length ? sessions.map((session) => sessionItem(session)) : [el('li', { text: 'Not signed in anywhere.' })]),
  );
  byId('customer-events').replaceChildren(
    ...(events.length ? events.map(eventItem) : [el('li', { text: 'No events.' })]),
  );
  byId('deactivate-button').hidden = !user.is_active;
  byId('activate-button').hidden = user.is_active;
  byId('customer').hidden = false;
}

async function find(email) {
  const { user } = await get(`admin/users?email=${encodeURIComponent(email)}`);
  await showCustomer(user);
}

function wire() {
  onSubmit(byId('sign-in-form'), async () => {
    const key = byId('admin-key').value;
    byId('admin-key').value = '';
    if (!key) throw new Error('Enter the admin key.');
    await post('admin/session', { key });
    showConsole();
    byId('find-email').focus();
  }, () => false);

  byId('sign-out').addEventListener('click', (event) =>
    whileDisabled(event.currentTarget, async () => {
      try {
        await del('admin/session');
        showSignIn('You have signed out.');
      } catch (error) {
        // The pass may still be good: say so rather than pretend.
        if (!signedOut(error)) announce('console-error', describe(error));
      }
    }));

  onSubmit(byId('find-form'), async () => {
    const email = byId('find-email').value.trim();
    if (!email) throw new Error("Enter the customer's email.");
    byId('console-notice').textContent = '';
    byId('console-error').textContent = '';
    byId('customer').hidden = true;
    await find(email);
  }, signedOut);

  // Enter in the reason field would press the first button, "Sign out of everything": each
  // action takes a click (or the keyboard on its own button).
  noImplicitSubmit(byId('actions-form'));

  onSubmit(byId('actions-form'), async (_form, submitter) => {
    const reason = byId('reason').value.trim();
    if (!reason) throw new Error('Give a reason: it goes into the audit trail.');
    const base = `admin/users/${encodeURIComponent(customer.id)}`;
    const action = submitter?.value;
    if (!action) return;
    const answer = await post(`${base}/${action}`, { reason });
    byId('reason').value = '';
    const ended = `${answer.revoked} session${answer.revoked === 1 ? '' : 's'} ended`;
    await find(customer.email);
    // The button used may be hidden now (deactivate ↔ reactivate): focus goes to what happened.
    announce('console-notice', {
      'logout-all': `Signed out of everything: ${ended}.`,
      deactivate: `Account deactivated: ${ended}.`,
      activate: 'Account reactivated: the customer can sign in again.',
    }[action]);
  }, signedOut);
}

async function start() {
  wire();
  try {
    await get('admin/session');
    showConsole();
  } catch (error) {
    showSignIn('', error instanceof ApiError && error.signedOut ? '' : describe(error));
  }
}

start();
