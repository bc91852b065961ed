// /account/: a customer's own security page. Signs in through the API (the session stays in
// an HttpOnly cookie the gateway keeps), then shows the devices signed in, two-factor, the
// password and recent security events. Any call that finds the session over (logged out
// elsewhere, revoked by support, expired) brings back the sign-in form.

import { ApiError, del, get, post } from './api.js';
import {
  announce, byId, describe, download, el, eventItem, noImplicitSubmit, onSubmit, sessionItem, showView,
  whileDisabled,
} from './ui.js';

/** How often the device list refreshes while someone is using the page. */
const REFRESH_MS = 5000;
/** No refresh after this long without a key or pointer: an unattended page lets the session idle out. */
const ATTENDED_MS = 5 * 60 * 1000;

let me = null;
let pendingUserId = null;
let useRecoveryCode = false;
let recoveryCodes = [];
let lastInput = Date.now();
let refresher = null;
/** Each device-list request's number: an answer older than the newest is dropped. */
let listRequests = 0;
/** Actions in flight: the periodic refresh waits for them. */
let acting = 0;

/** A signed-out answer returns to the sign-in form (once); anything else is for the caller. */
function signedOut(error) {
  if (error instanceof ApiError && error.signedOut) {
    if (me) showSignIn('Your session has ended. Please sign in again.');
    return true;
  }
  return false;
}

/** The sign-in form, with nothing of the previous user left on the page. */
function showSignIn(notice = '', error = '') {
  me = null;
  pendingUserId = null;
  recoveryCodes = [];
  clearInterval(refresher);
  refresher = null;
  listRequests += 1;
  byId('sign-out').hidden = true;
  for (const id of ['devices', 'events', 'recovery-codes']) byId(id).replaceChildren();
  for (const id of ['mfa-secret', 'account-notice', 'account-error', 'devices-error', 'password-status']) {
    byId(id).textContent = '';
  }
  byId('mfa-qr').removeAttribute('src');
  for (const field of document.querySelectorAll('input')) {
    if (field.id !== 'email') field.value = '';
  }
  byId('mfa-keep-others').checked = false;
  showView('sign-in');
  // Set once shown: a live region inside a hidden view is not announced.
  byId('sign-in-notice').textContent = notice;
  byId('sign-in-error').textContent = error;
}

/** Runs a user's action on the account; the periodic refresh holds off meanwhile. */
async function act(button, action) {
  acting += 1;
  try {
    await whileDisabled(button, action);
  } catch (error) {
    if (!signedOut(error)) announce('account-error', describe(error));
  } finally {
    acting -= 1;
  }
}

function showSecondFactor() {
  useRecoveryCode = false;
  renderSecondFactor();
  showView('second-factor');
}

function renderSecondFactor() {
  byId('second-factor-code').value = '';
  byId('second-factor-hint').textContent = useRecoveryCode
    ? 'Enter one of the recovery codes you saved when you turned on two-factor.'
    : 'Enter the 6-digit code from your authenticator app.';
  byId('second-factor-label').textContent = useRecoveryCode ? 'Recovery code' : 'Code';
  byId('second-factor-code').setAttribute('inputmode', useRecoveryCode ? 'text' : 'numeric');
  byId('use-recovery').textContent = useRecoveryCode
    ? 'Use a code from your app instead'
    : 'Use a recovery code instead';
}

async function showAccount(notice = '') {
  const answer = await get('auth/me');
  me = answer.user;
  byId('greeting').textContent = `${me.first_name}, your security`;
  byId('account-error').textContent = '';
  byId('sign-out').hidden = false;
  showView('account');
  byId('account-notice').textContent = notice;
  renderMfa();
  if (!refresher) refresher = setInterval(refreshIfAttended, REFRESH_MS);
  await refreshAll();
}

/** The device list and the events; a failure is shown with the list, not thrown. */
async function refreshAll() {
  try {
    await Promise.all([refreshDevices(), refreshEvents()]);
  } catch (error) {
    if (!signedOut(error)) byId('devices-error').textContent = describe(error);
  }
}

async function refreshIfAttended() {
  if (!me || acting > 0 || document.visibilityState !== 'visible') return;
  if (Date.now() - lastInput > ATTENDED_MS) return;
  // Rebuilding the list under the keyboard would drop the focus of a device's button.
  if (byId('devices').contains(document.activeElement)) return;
  try {
    await refreshDevices();
  } catch (error) {
    if (!signedOut(error)) byId('devices-error').textContent = describe(error);
  }
}

async function refreshDevices() {
  const request = (listRequests += 1);
  const { sessions } = await get('auth/sessions');
  // A newer request (after an action, say) answers for the list; a stale one would bring
  // back a device just signed out.
  if (request !== listRequests || !me) return;
  byId('devices-error').textContent = '';
  byId('devices').replaceChildren(...sessions.map(deviceItem));
  byId('sign-out-others').hidden = sessions.length < 2;
}

function deviceItem(session) {
  let signOut = el('span', { class: 'badge', text: 'This device' });
  if (!session.current) {
    signOut = el('button', { type: 'button', class: 'quiet', 'aria-label': `Sign out ${session.device}`, text: 'Sign out' });
    signOut.addEventListener('click', (event) => endSession(event.currentTarget, session.id));
  }
  return sessionItem(session, signOut);
}

async function endSession(button, id) {
  await act(button, async () => {
    await del(`auth/sessions/${encodeURIComponent(id)}`);
    await refreshAll();
    announce('account-notice', 'That device is signed out.');
  });
}

async function refreshEvents() {
  const { events } = await get('auth/events?limit=20');
  byId('events').replaceChildren(
    ...(events.length ? events.map(eventItem) : [el('li', { text: 'Nothing yet.' })]),
  );
}

function renderMfa() {
  const on = me.mfa_enabled;
  byId('mfa-state').textContent = on
    ? 'Two-factor is on: signing in needs a code from your app.'
    : 'Two-factor is off: your password alone signs you in.';
  byId('mfa-setup-form').hidden = on;
  byId('mfa-enable-form').hidden = true;
  byId('mfa-manage-form').hidden = !on;
  byId('recovery').hidden = recoveryCodes.length === 0;
  if (recoveryCodes.length) {
    byId('mfa-manage-form').hidden = true;
    byId('mfa-setup-form').hidden = true;
  }
}

function showRecoveryCodes(codes) {
  recoveryCodes = codes;
  byId('recovery-codes').replaceChildren(...codes.map((code) => el('li', { text: code })));
  byId('recovery-status').textContent = '';
  renderMfa();
  byId('copy-codes').focus();
}

/** The factor field: six digits are an app code, anything else a recovery code. */
function factor(value) {
  const code = value.trim();
  return /^\d{6}$/.test(code.replaceAll(' ', ''))
    ? { otpCode: code.replaceAll(' ', '') }
    : { recoveryCode: code };
}

function wire() {
  for (const event of ['keydown', 'pointerdown']) {
    document.addEventListener(event, () => (lastInput = Date.now()), { passive: true });
  }

  onSubmit(byId('sign-in-form'), async () => {
    const email = byId('email').value.trim();
    const password = byId('password').value;
    if (!email || !password) throw new Error('Enter your email and password.');
    const answer = await post('auth/login', { email, password });
    byId('password').value = '';
    if (answer.requireMfa) {
      pendingUserId = answer.userId;
      showSecondFactor();
    } else {
      await showAccount();
    }
  }, () => false);

  onSubmit(byId('second-factor-form'), async () => {
    const code = byId('second-factor-code').value.trim();
    if (!code) throw new Error(useRecoveryCode ? 'Enter a recovery code.' : 'Enter the code from your app.');
    const body = { userId: pendingUserId, ...(useRecoveryCode ? { recoveryCode: code } : { otpCode: code }) };
    try {
      const answer = await post('auth/verify-mfa', body);
      pendingUserId = null;
      const left = answer.recoveryCodesLeft;
      await showAccount(left === undefined ? '' : `You used a recovery code: ${left} left.`);
    } catch (error) {
      byId('second-factor-code').value = '';
      throw error;
    }
  }, () => false);

  byId('start-over').addEventListener('click', () => showSignIn());

  byId('use-recovery').addEventListener('click', () => {
    useRecoveryCode = !useRecoveryCode;
    renderSecondFactor();
    byId('second-factor-code').focus();
  });

  byId('sign-out').addEventListener('click', (event) =>
    act(event.currentTarget, async () => {
      try {
        await post('auth/logout');
      } catch (error) {
        // Already over is signed out too; anything else and the session may live on.
        if (!(error instanceof ApiError && error.signedOut)) throw error;
      }
      showSignIn('You have signed out.');
    }));

  byId('sign-out-others').addEventListener('click', (event) =>
    act(event.currentTarget, async () => {
      const { revoked } = await post('auth/logout-all', { keepCurrent: true });
      await refreshAll();
      announce('account-notice', `Signed out of ${revoked} other device${revoked === 1 ? '' : 's'}.`);
    }));

  onSubmit(byId('mfa-setup-form'), async () => {
    const password = byId('mfa-setup-password').value;
    if (!password) throw new Error('Enter your password.');
    const setup = await post('auth/mfa/setup', { password });
    byId('mfa-setup-password').value = '';
    byId('mfa-qr').src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(setup.qrSvg)}`;
    byId('mfa-secret').textContent = setup.secret.match(/.{1,4}/g).join(' ');
    byId('mfa-setup-form').hidden = true;
    byId('mfa-enable-form').hidden = false;
    byId('mfa-enable-code').focus();
  }, signedOut);

  onSubmit(byId('mfa-enable-form'), async () => {
    const otpCode = byId('mfa-enable-code').value.replaceAll(' ', '');
    if (!otpCode) throw new Error('Enter the code from your app.');
    const keepOtherSessions = byId('mfa-keep-others').checked;
    const answer = await post('auth/mfa/enable', { otpCode, keepOtherSessions });
    byId('mfa-enable-code').value = '';
    byId('mfa-qr').removeAttribute('src');
    byId('mfa-secret').textContent = '';
    me.mfa_enabled = true;
    byId('account-notice').textContent = 'Two-factor is on.';
    showRecoveryCodes(answer.recoveryCodes);
    await refreshAll();
  }, signedOut);

  onSubmit(byId('mfa-manage-form'), async (_form, submitter) => {
    const password = byId('mfa-manage-password').value;
    const code = byId('mfa-manage-code').value;
    if (!password || !code.trim()) throw new Error('Enter your password and a code.');
    const body = { password, ...factor(code) };
    if (submitter?.value === 'disable') {
      await post('auth/mfa/disable', body);
      me.mfa_enabled = false;
      renderMfa();
      announce('account-notice', 'Two-factor is off.');
    } else if (submitter?.value === 'regenerate') {
      const answer = await post('auth/mfa/recovery-codes', body);
      byId('account-notice').textContent = 'New recovery codes made: the old ones no longer work.';
      showRecoveryCodes(answer.recoveryCodes);
    } else {
      return;
    }
    byId('mfa-manage-password').value = '';
    byId('mfa-manage-code').value = '';
    await refreshAll();
  }, signedOut);

  byId('copy-codes').addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(recoveryCodes.join('\n'));
      byId('recovery-status').textContent = 'Copied.';
    } catch {
      byId('recovery-status').textContent = 'Copying is not allowed here: download them instead.';
    }
  });
  byId('download-codes').addEventListener('click', () => {
    download('finsec-recovery-codes.txt', `FinSec recovery codes for ${me.email}\n\n${recoveryCodes.join('\n')}\n`);
    byId('recovery-status').textContent = 'Downloaded.';
  });
  byId('codes-saved').addEventListener('click', () => {
    recoveryCodes = [];
    byId('recovery-codes').replaceChildren();
    renderMfa();
    announce('mfa-state', byId('mfa-state').textContent);
  });
  // "New recovery codes" and "Turn off" are different acts: Enter presses neither.
  noImplicitSubmit(byId('mfa-manage-form'));

  onSubmit(byId('password-form'), async () => {
    const currentPassword = byId('current-password').value;
    const newPassword = byId('new-password').value;
    byId('password-status').textContent = '';
    if (!currentPassword || !newPassword) throw new Error('Enter your current and your new password.');
    if (newPassword !== byId('confirm-password').value) throw new Error('The new passwords do not match.');
    const { revoked } = await post('auth/change-password', { currentPassword, newPassword });
    for (const id of ['current-password', 'new-password', 'confirm-password']) byId(id).value = '';
    announce(
      'password-status',
      `Password changed.${revoked ? ` ${revoked} other device${revoked === 1 ? ' was' : 's were'} signed out.` : ''}`,
    );
    await refreshAll();
  }, signedOut);
}

async function start() {
  wire();
  try {
    await showAccount();
  } catch (error) {
    // No session yet (or an old one): the sign-in form, without a word about it; anything
    // else is said as the error it is.
    showSignIn('', error instanceof ApiError && error.signedOut ? '' : describe(error));
  }
}

start();
