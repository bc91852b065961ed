// /account/: a customer's own security page. Signs in through the API (the session stays in
// an HttpOnly cookie the gateway keeps), then shows the devices signed in, two-factor, the
// password and recent security events. Any call that finds the session over (logged out
// elsewhere, revoked by support, expired) brings back the sign-in form.

import { ApiError, del, get, post } from './api.js';
import { ago, byId, describe, download, el, eventItem, onSubmit, showView, when } from './ui.js';

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

/** A signed-out answer returns to the sign-in form; anything else is for the caller to show. */
function signedOut(error) {
  if (error instanceof ApiError && error.signedOut) {
    showSignIn('Your session has ended. Please sign in again.');
    return true;
  }
  return false;
}

function showSignIn(notice = '') {
  me = null;
  clearInterval(refresher);
  refresher = null;
  byId('sign-out').hidden = true;
  byId('sign-in-notice').textContent = notice;
  byId('password').value = '';
  showView('sign-in');
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
  byId('account-notice').textContent = notice;
  byId('sign-out').hidden = false;
  showView('account');
  renderMfa();
  await Promise.all([refreshDevices(), refreshEvents()]);
  if (!refresher) refresher = setInterval(refreshIfAttended, REFRESH_MS);
}

async function refreshIfAttended() {
  if (!me || document.visibilityState !== 'visible' || Date.now() - lastInput > ATTENDED_MS) return;
  try {
    await refreshDevices();
  } catch (error) {
    if (!signedOut(error)) byId('devices-error').textContent = describe(error);
  }
}

async function refreshDevices() {
  const { sessions } = await get('auth/sessions');
  byId('devices-error').textContent = '';
  byId('devices').replaceChildren(...sessions.map(deviceItem));
  byId('sign-out-others').hidden = sessions.length < 2;
}

function deviceItem(session) {
  let signOut = el('span', { class: 'badge', text: 'This device' });
  if (!session.current) {
    signOut = el('button', { type: 'button', class: 'quiet', 'aria-label': `Sign out ${session.device}`, text: 'Sign out' });
    signOut.addEventListener('click', () => endSession(session.id));
  }
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
    signOut,
  );
}

async function endSession(id) {
  try {
    await del(`auth/sessions/${encodeURIComponent(id)}`);
    byId('account-notice').textContent = 'That device is signed out.';
    await Promise.all([refreshDevices(), refreshEvents()]);
  } catch (error) {
    if (!signedOut(error)) byId('devices-error').textContent = describe(error);
  }
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

  byId('use-recovery').addEventListener('click', () => {
    useRecoveryCode = !useRecoveryCode;
    renderSecondFactor();
    byId('second-factor-code').focus();
  });

  byId('sign-out').addEventListener('click', async () => {
    try {
      await post('auth/logout');
    } catch (error) {
      if (signedOut(error)) return;
    }
    showSignIn('You have signed out.');
  });

  byId('sign-out-others').addEventListener('click', async () => {
    try {
      const { revoked } = await post('auth/logout-all', { keepCurrent: true });
      byId('account-notice').textContent = `Signed out of ${revoked} other device${revoked === 1 ? '' : 's'}.`;
      await Promise.all([refreshDevices(), refreshEvents()]);
    } catch (error) {
      if (!signedOut(error)) byId('devices-error').textContent = describe(error);
    }
  });

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
    await Promise.all([refreshDevices(), refreshEvents()]);
  }, signedOut);

  onSubmit(byId('mfa-manage-form'), async (_form, submitter) => {
    const password = byId('mfa-manage-password').value;
    const code = byId('mfa-manage-code').value;
    if (!password || !code.trim()) throw new Error('Enter your password and a code.');
    const body = { password, ...factor(code) };
    if (submitter?.value === 'disable') {
      await post('auth/mfa/disable', body);
      me.mfa_enabled = false;
      byId('account-notice').textContent = 'Two-factor is off.';
      renderMfa();
    } else {
      const answer = await post('auth/mfa/recovery-codes', body);
      byId('account-notice').textContent = 'New recovery codes made: the old ones no longer work.';
      showRecoveryCodes(answer.recoveryCodes);
    }
    byId('mfa-manage-password').value = '';
    byId('mfa-manage-code').value = '';
    await Promise.all([refreshDevices(), refreshEvents()]);
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
  });

  onSubmit(byId('password-form'), async () => {
    const currentPassword = byId('current-password').value;
    const newPassword = byId('new-password').value;
    byId('password-status').textContent = '';
    if (!currentPassword || !newPassword) throw new Error('Enter your current and your new password.');
    if (newPassword !== byId('confirm-password').value) throw new Error('The new passwords do not match.');
    const { revoked } = await post('auth/change-password', { currentPassword, newPassword });
    for (const id of ['current-password', 'new-password', 'confirm-password']) byId(id).value = '';
    byId('password-status').textContent =
      `Password changed.${revoked ? ` ${revoked} other device${revoked === 1 ? ' was' : 's were'} signed out.` : ''}`;
    await Promise.all([refreshDevices(), refreshEvents()]);
  }, signedOut);
}

async function start() {
  wire();
  try {
    await showAccount();
  } catch (error) {
    // No session yet (or an old one): the sign-in form, without a word about it.
    showSignIn(error instanceof ApiError && error.signedOut ? '' : describe(error));
  }
}

start();
