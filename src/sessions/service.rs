//! [`Sessions`]: the operations the HTTP layer (and the CLI, through it) performs on live
//! sessions. It does the work that must not happen inside an actor (password checks on the
//! hashing threads, token signing), then asks the user's actor to make the change.

use std::sync::Arc;

use chrono::Utc;
use ractor::{Actor, ActorRef};
use secrecy::SecretString;

use super::SessionError;
use super::messages::{
    FactorRequest, FreshRow, LoginStep, MfaAttempt, Opened, SecondFactor, SessionGrant,
    SupervisorMsg, UserMsg,
};
use super::registry::{Registry, Residents};
use super::supervisor::{SessionSupervisor, SupervisorArgs};
use super::throttle::Standing;
use super::user_actor::SessionPolicy;
use crate::auth::recovery::RecoveryCodes;
use crate::auth::totp::{self, Enrolment};
use crate::auth::{AuthError, PasswordHasher, PasswordPolicy, TokenIssuer};
use crate::cluster::{Cluster, ClusterEvent};
use crate::crypto::Purpose;
use crate::domain::{
    AuthEvent, Device, Email, EventKind, RecordedEvent, RevokeReason, Session, SessionId, User,
    UserId, UserProfile,
};
use crate::store::DynStore;

/// One line per authentication step, for operators and their alerting: the step, the account
/// (when the credentials named one), the client's address, and the outcome with a stable
/// reason. Never an email typed, a password, a code or a token. (The audit trail in the store
/// records the same steps per account; this line is for log pipelines.)
fn audit(step: &'static str, user: Option<UserId>, ip: Option<&str>, error: Option<&SessionError>) {
    let user = user.map(UserId::get);
    match error {
        None => tracing::info!(step, user_id = ?user, ip, outcome = "success", "authentication"),
        Some(err) => {
            let reason = refusal_reason(err);
            tracing::info!(step, user_id = ?user, ip, outcome = "refused", reason, "authentication");
        }
    }
}

/// The stable code of a refusal, for log lines and audit events.
fn refusal_reason(err: &SessionError) -> &'static str {
    match err {
        SessionError::Auth(AuthError::InvalidCredentials) => "invalid_credentials",
        SessionError::Auth(AuthError::AccountInactive) => "account_inactive",
        SessionError::Auth(AuthError::InvalidMfaCode) => "invalid_mfa_code",
        SessionError::Auth(AuthError::Busy) => "busy",
        SessionError::Throttled(_) => "throttled",
        _ => "unavailable",
    }
}

/// What `mfa/setup` hands out, once: the new pending secret and how to enrol it.
pub struct MfaSetup {
    pub secret: String,
    pub otpauth_url: String,
    pub qr_svg: String,
}

/// A node ready to serve: how it takes part in the cluster (`standalone` or `member`).
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    pub cluster: &'static str,
}

/// Most events one page of `GET /api/auth/events` returns.
pub const MAX_EVENTS_PAGE: usize = 100;

/// A fresh session and the token that carries it.
#[derive(Debug, Clone)]
pub struct IssuedSession {
    pub access_token: String,
    pub session: Session,
    pub user: UserProfile,
    /// When a recovery code opened it: how many are left.
    pub recovery_codes_left: Option<usize>,
}

#[derive(Debug, Clone)]
pub enum LoginOutcome {
    LoggedIn(Box<IssuedSession>),
    MfaRequired { user_id: UserId, mfa_token: String },
}

/// What an authenticated request knows about its caller: a verified token whose session the
/// user's actor has just confirmed live.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user_id: UserId,
    pub session_id: SessionId,
    /// The token's own claims, as verified.
    pub token: crate::auth::TokenSubject,
    pub session: Session,
    pub user: Arc<UserProfile>,
    /// Where this request came from (the session's own device is where it was opened).
    pub device: Device,
}

/// A password change: the current one to prove it is the user, and the new one.
pub struct PasswordChange {
    pub current: SecretString,
    pub new: SecretString,
}

/// The email and password of the original FinSec `verify-mfa` form.
pub struct Credentials {
    pub email: Email,
    pub password: SecretString,
}

pub struct Sessions {
    store: DynStore,
    policy: Arc<SessionPolicy>,
    cluster: Cluster,
    registry: Registry,
    supervisor: ActorRef<SupervisorMsg>,
    hasher: PasswordHasher,
    tokens: TokenIssuer,
    require_mfa_token: bool,
    min_password_length: usize,
    validations: Validations,
}

/// `finsec_validations_total`, one handle per path, taken once: every authenticated request
/// counts, and the macro would look the series up in the registry each time.
struct Validations {
    by_publication: metrics::Counter,
    by_actor: metrics::Counter,
}

impl Validations {
    fn new() -> Self {
        let counter = |path: &'static str| metrics::counter!("finsec_validations_total", "answered_by" => path);
        Self {
            by_publication: counter("publication"),
            by_actor: counter("actor"),
        }
    }
}

pub struct SessionsConfig {
    pub policy: SessionPolicy,
    pub call_timeout: std::time::Duration,
    pub require_mfa_token: bool,
    pub min_password_length: usize,
}

impl Sessions {
    /// Starts the supervisor and wires the registry to it. `residents` is shared with the
    /// cluster's bus (see `sessions::remote`), which must exist before anything is asked.
    pub async fn start(
        store: DynStore,
        residents: Arc<Residents>,
        cluster: Cluster,
        hasher: PasswordHasher,
        tokens: TokenIssuer,
        config: SessionsConfig,
    ) -> Result<Self, SessionError> {
        let policy = Arc::new(config.policy);
        let policy_for_sessions = policy.clone();
        let args = SupervisorArgs {
            residents: residents.clone(),
            store: store.clone(),
            policy: policy.clone(),
            cluster: cluster.clone(),
        };
        let (supervisor, _handle) = Actor::spawn(None, SessionSupervisor, args)
            .await
            .map_err(|e| SessionError::Unavailable(format!("supervisor failed to start: {e}")))?;
        let registry = Registry::new(
            residents,
            supervisor.get_cell(),
            store.clone(),
            policy,
            cluster.clone(),
            config.call_timeout,
        );
        Ok(Self {
            store,
            policy: policy_for_sessions,
            cluster,
            registry,
            supervisor,
            hasher,
            tokens,
            require_mfa_token: config.require_mfa_token,
            min_password_length: config.min_password_length,
            validations: Validations::new(),
        })
    }

    /// Stops every user actor gracefully (each answers what is already in its mailbox and
    /// writes its touches), then the supervisor. Revocations not yet written stay in the
    /// journal for the next start.
    pub async fn shutdown(&self) {
        // Out of the cluster first: nobody should wait for this node's confirmations while
        // it drains.
        self.cluster.leave().await;
        let grace = Some(std::time::Duration::from_secs(5));
        self.supervisor.drain_children_and_wait(grace).await;
        let _ = self
            .supervisor
            .stop_and_wait(Some("shutdown".into()), grace)
            .await;
    }

    /// Closes and unlocks the pending-revocation journal (after [`shutdown`](Self::shutdown)):
    /// what it holds stays on disk for the next start.
    pub fn release_journal(&self) {
        self.policy.journal.release();
    }

    /// Whether this node can serve: the database answers (within `database.timeout`) with
    /// the schema this build expects, and, when clustered, the lease is held and the bus
    /// proven. `Err` names the first thing that is not ready.
    pub async fn readiness(&self) -> Result<Readiness, &'static str> {
        match self.store.schema_is_current().await {
            Ok(true) => {}
            Ok(false) => return Err("database migrations are not applied"),
            Err(_) => return Err("the database does not answer"),
        }
        let cluster = match (self.cluster.is_clustered(), self.cluster.trust_epoch()) {
            (false, _) => "standalone",
            (true, Some(_)) => "member",
            (true, None) => return Err("no cluster lease, or the bus is not proven"),
        };
        Ok(Readiness { cluster })
    }

    /// Gauges read at scrape time: resident user actors, the heap in use, and whether this
    /// node may answer from memory (1) or must ask MySQL (0).
    pub fn record_gauges(&self) {
        metrics::gauge!("finsec_resident_actors").set(self.registry.resident_count() as f64);
        if let Some(bytes) = crate::allocator::heap_in_use() {
            metrics::gauge!("finsec_heap_in_use_bytes").set(bytes as f64);
        }
        let trusted = self.cluster.trust_epoch().is_some();
        metrics::gauge!("finsec_cluster_trusted").set(if trusted { 1.0 } else { 0.0 });
    }

    /// The password hasher (tests look at how many hashes run).
    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    /// This node's place in the cluster (standalone when alone).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Signs and verifies access tokens; publishes its public keys.
    pub fn tokens(&self) -> &TokenIssuer {
        &self.tokens
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn supervisor(&self) -> &ActorRef<SupervisorMsg> {
        &self.supervisor
    }

    /// The password step. An unknown email and a wrong password are the same error and cost
    /// the same scrypt verification.
    pub async fn login(
        &self,
        credentials: Credentials,
        device: Device,
    ) -> Result<LoginOutcome, SessionError> {
        let outcome = self.login_steps(credentials, device).await;
        let label = match &outcome {
            Ok(LoginOutcome::LoggedIn(_)) => "success",
            Ok(LoginOutcome::MfaRequired { .. }) => "mfa_required",
            Err(err) => refusal_reason(err),
        };
        metrics::counter!("finsec_logins_total", "outcome" => label).increment(1);
        outcome
    }

    async fn login_steps(
        &self,
        credentials: Credentials,
        device: Device,
    ) -> Result<LoginOutcome, SessionError> {
        let password = credentials.password.clone();
        let marks = self.registry.marks();
        let (user, failures) = self.guarded_password_check(credentials, &device).await?;
        let user_id = user.id;
        let row = FreshRow { user, marks };
        let step = self
            .registry
            .ask_having_read(&row, |reply| UserMsg::Login {
                row: Box::new(row.clone()),
                failures,
                device: device.clone(),
                reply,
            })
            .await
            .map_err(|err| match err {
                // Deleted between the password check and now: as if it never existed.
                SessionError::UnknownUser => AuthError::InvalidCredentials.into(),
                other => other,
            })?;
        // Only now: a new hash stored while the login was under way would (rightly) stop it.
        self.rehash_if_weaker(&row.user, password);
        Ok(match step {
            LoginStep::SessionOpened(opened) => {
                LoginOutcome::LoggedIn(Box::new(self.opened(*opened).await?))
            }
            LoginStep::MfaRequired { mfa_token } => {
                LoginOutcome::MfaRequired { user_id, mfa_token }
            }
        })
    }

    /// The second factor. With `credentials` (the original clients' form) the password is
    /// checked here and stands in for the challenge; without, the challenge opened by the
    /// password step must be pending in the user's actor.
    pub async fn verify_mfa(
        &self,
        user_id: UserId,
        factor: SecondFactor,
        mfa_token: Option<String>,
        credentials: Option<Credentials>,
        device: Device,
    ) -> Result<IssuedSession, SessionError> {
        let mut rehash = None;
        let password_verified = match credentials {
            Some(credentials) => {
                // The email must be this user's: a right password for another account does
                // not open this one, and says no more than a wrong password would.
                let password = credentials.password.clone();
                let (user, _) = self.guarded_password_check(credentials, &device).await?;
                if user.id != user_id {
                    return Err(AuthError::InvalidCredentials.into());
                }
                rehash = Some((user.clone(), password));
                Some(Box::new(user))
            }
            None => {
                if self.require_mfa_token && mfa_token.is_none() {
                    return Err(AuthError::InvalidMfaCode.into());
                }
                None
            }
        };
        let attempt = MfaAttempt {
            factor,
            mfa_token,
            password_verified,
            device,
        };
        let ip = attempt.device.ip.clone();
        let opened = self
            .registry
            .ask(user_id, |reply| UserMsg::VerifyMfa {
                attempt: attempt.clone(),
                reply,
            })
            .await
            .map_err(|err| match err {
                // Guessing codes for ids that do not exist must look like a wrong code.
                SessionError::UnknownUser => AuthError::InvalidMfaCode.into(),
                other => other,
            });
        audit(
            "second factor",
            Some(user_id),
            ip.as_deref(),
            opened.as_ref().err(),
        );
        let label = match &opened {
            Ok(_) => "success",
            Err(err) => refusal_reason(err),
        };
        metrics::counter!("finsec_mfa_verifications_total", "outcome" => label).increment(1);
        let opened = opened?;
        if let Some((user, password)) = rehash {
            self.rehash_if_weaker(&user, password);
        }
        self.opened(opened).await
    }

    /// Verifies a bearer token and asks the user's actor whether its session is live.
    pub async fn authenticate(
        &self,
        token: &str,
        device: Device,
    ) -> Result<Authenticated, SessionError> {
        let subject = self.tokens.verify(token)?;
        let published = self
            .registry
            .validate_published(subject.user_id, subject.session_id);
        let grant = match published {
            Some(grant) => {
                self.validations.by_publication.increment(1);
                grant
            }
            None => {
                self.validations.by_actor.increment(1);
                self.registry
                    .ask(subject.user_id, |reply| UserMsg::Validate {
                        session_id: subject.session_id,
                        reply,
                    })
                    .await
                    .map_err(|err| match err {
                        SessionError::UnknownUser => SessionError::Ended,
                        other => other,
                    })?
            }
        };
        Ok(Authenticated {
            user_id: subject.user_id,
            session_id: subject.session_id,
            token: subject,
            session: grant.session,
            user: grant.user,
            device,
        })
    }

    /// Ends one of the caller's own sessions (their current one by default).
    pub async fn logout(
        &self,
        caller: &Authenticated,
        user_id: Option<UserId>,
        session_id: Option<SessionId>,
    ) -> Result<(), SessionError> {
        if user_id.is_some_and(|id| id != caller.user_id) {
            return Err(SessionError::Forbidden(
                "you can only end your own sessions",
            ));
        }
        let session_id = session_id.unwrap_or(caller.session_id);
        self.registry
            .ask(caller.user_id, |reply| UserMsg::Revoke {
                session_id,
                reason: RevokeReason::Logout,
                origin: self.policy.origin(&caller.device),
                reply,
            })
            .await?;
        self.confirm_ended(caller.user_id, vec![session_id])
            .await
            .map(drop)
    }

    /// The caller's live sessions, newest first.
    pub async fn sessions_of(&self, caller: &Authenticated) -> Result<Vec<Session>, SessionError> {
        self.registry
            .ask(caller.user_id, |reply| UserMsg::ListSessions { reply })
            .await
    }

    /// Ends one of the caller's sessions by id (another device of theirs, or this one).
    pub async fn revoke_session(
        &self,
        caller: &Authenticated,
        session_id: SessionId,
    ) -> Result<(), SessionError> {
        self.logout(caller, None, Some(session_id)).await
    }

    /// Ends every session of the caller, or every other one with `keep_current`.
    pub async fn logout_all(
        &self,
        caller: &Authenticated,
        keep_current: bool,
    ) -> Result<usize, SessionError> {
        let except = keep_current.then_some(caller.session_id);
        let ended = self
            .registry
            .ask(caller.user_id, |reply| UserMsg::RevokeAll {
                except,
                reason: RevokeReason::LogoutAll,
                note: None,
                origin: self.policy.origin(&caller.device),
                reply,
            })
            .await?;
        self.confirm_all_ended(caller.user_id, ended).await
    }

    /// Checks the current password, hashes the new one (both off the runtime and off the
    /// actor), then has the actor store it and end every other session. Returns how many
    /// sessions ended.
    pub async fn change_password(
        &self,
        caller: &Authenticated,
        change: PasswordChange,
    ) -> Result<usize, SessionError> {
        use secrecy::ExposeSecret;
        let personal = [
            caller.user.email.as_str(),
            caller.user.first_name.as_str(),
            caller.user.last_name.as_str(),
        ];
        let policy = PasswordPolicy {
            min_length: self.min_password_length,
        };
        policy
            .check(
                change.new.expose_secret(),
                change.current.expose_secret(),
                &personal,
            )
            .map_err(SessionError::WeakPassword)?;
        self.reauthenticate(caller, change.current).await?;
        let password_hash = self.hasher.hash(change.new).await?;
        let ended = self
            .registry
            .ask(caller.user_id, |reply| UserMsg::ChangePassword {
                password_hash: password_hash.clone(),
                keep: caller.session_id,
                origin: self.policy.origin(&caller.device),
                reply,
            })
            .await?;
        self.confirm_all_ended(caller.user_id, ended).await
    }

    /// The caller proves it is the user again (ASVS 5.0 7.5.1: before changing a factor or
    /// the password): the current password, on the hashing threads, behind the same per-account
    /// throttle as a login, and a wrong one counts like a wrong login.
    async fn reauthenticate(
        &self,
        caller: &Authenticated,
        password: SecretString,
    ) -> Result<(), SessionError> {
        let throttle = &self.policy.throttle;
        let email = Email::parse(&caller.user.email)
            .map_err(|_| SessionError::Unavailable("stored email does not parse".into()))?;
        let account = throttle.account(&email);
        let (_, _checking) = throttle.begin(self.store.as_ref(), &account).await?;
        // Timed after the account's turn, which may have waited.
        let now = Utc::now();
        let origin = self.policy.origin(&caller.device);
        let event = |kind| AuthEvent::new(now, kind, Some(caller.user_id), origin.clone());
        let user = self
            .store
            .user_by_id(caller.user_id)
            .await?
            .ok_or(SessionError::Ended)?;
        if !self
            .hasher
            .verify(password, Some(&user.password_hash))
            .await?
        {
            self.record(event(EventKind::LoginFailed).reason("reauthentication"))
                .await;
            if throttle.fail(self.store.as_ref(), &account, now).await {
                self.record(event(EventKind::LoginThrottled).reason("account_locked"))
                    .await;
            }
            return Err(AuthError::InvalidCredentials.into());
        }
        Ok(())
    }

    /// `mfa/setup`: after the password, a new pending secret (replacing any pending one),
    /// sealed before it leaves this function; the clear secret is returned this once.
    pub async fn mfa_setup(
        &self,
        caller: &Authenticated,
        password: SecretString,
    ) -> Result<MfaSetup, SessionError> {
        self.reauthenticate(caller, password).await?;
        let secret = totp::new_secret()
            .map_err(|e| SessionError::Unavailable(format!("no randomness: {e}")))?;
        // The label is for people; an email may hold a colon, which a label may not.
        let label = caller.user.email.replace(':', "_");
        let enrolment = Enrolment::new(&secret, &label)
            .ok_or_else(|| SessionError::Unavailable("enrolment URI could not be built".into()))?;
        let sealed = self
            .policy
            .keyring
            .seal(Purpose::Totp, secret.as_bytes())
            .map_err(|e| SessionError::Unavailable(e.to_string()))?;
        self.change_factor(caller, FactorRequest::Setup { secret: sealed })
            .await?;
        Ok(MfaSetup {
            secret,
            otpauth_url: enrolment.otpauth_url,
            qr_svg: enrolment.qr_svg,
        })
    }

    /// `mfa/enable`: a code of the pending secret turns it on; returns the recovery codes
    /// (shown this once) and how many other sessions ended.
    pub async fn mfa_enable(
        &self,
        caller: &Authenticated,
        code: String,
        keep_other_sessions: bool,
    ) -> Result<(Vec<String>, usize), SessionError> {
        let codes = new_recovery_codes()?;
        let request = FactorRequest::Enable {
            code,
            codes: codes.stored,
            end_others: !keep_other_sessions,
        };
        let ended = self.change_factor(caller, request).await?;
        Ok((codes.shown, ended))
    }

    /// `mfa/disable`: the password and the factor (a code or a recovery code); returns how
    /// many other sessions ended.
    pub async fn mfa_disable(
        &self,
        caller: &Authenticated,
        password: SecretString,
        proof: SecondFactor,
        keep_other_sessions: bool,
    ) -> Result<usize, SessionError> {
        self.reauthenticate(caller, password).await?;
        let request = FactorRequest::Disable {
            proof,
            end_others: !keep_other_sessions,
        };
        self.change_factor(caller, request).await
    }

    /// `mfa/recovery-codes`: the password and the factor; a new set (the old one is void).
    pub async fn mfa_new_recovery_codes(
        &self,
        caller: &Authenticated,
        password: SecretString,
        proof: SecondFactor,
    ) -> Result<Vec<String>, SessionError> {
        self.reauthenticate(caller, password).await?;
        let codes = new_recovery_codes()?;
        let request = FactorRequest::NewRecoveryCodes {
            proof,
            codes: codes.stored,
        };
        self.change_factor(caller, request).await?;
        Ok(codes.shown)
    }

    /// The user's actor makes the change; then every node has it before the caller hears
    /// 200: the sessions it ended are confirmed gone, and every node rereads the user's row
    /// (the factor in force) before it answers for this user again.
    async fn change_factor(
        &self,
        caller: &Authenticated,
        request: FactorRequest,
    ) -> Result<usize, SessionError> {
        let changes_factor = !matches!(request, FactorRequest::Setup { .. });
        let ended = self
            .registry
            .ask(caller.user_id, |reply| UserMsg::ChangeFactor {
                request: request.clone(),
                keep: caller.session_id,
                origin: self.policy.origin(&caller.device),
                reply,
            })
            .await?;
        let count = self.confirm_ended(caller.user_id, ended).await?;
        if changes_factor {
            self.cluster
                .confirm(ClusterEvent::UserChanged {
                    user: caller.user_id,
                })
                .await?;
        }
        Ok(count)
    }

    /// A page of the user's audit events, newest first (ids below `before`).
    pub async fn events_of(
        &self,
        user: UserId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, SessionError> {
        let limit = limit.clamp(1, MAX_EVENTS_PAGE);
        Ok(self.store.events_of(user, before, limit).await?)
    }

    /// Records an event that goes with no other write; a failed write is logged only (the
    /// request it describes was refused either way).
    async fn record(&self, event: AuthEvent) {
        if let Err(err) = self.store.record_event(&event).await {
            tracing::warn!(kind = %event.kind, error = %err, "audit event not recorded");
        }
    }

    /// Operators: the account with this email (support finds a customer by it).
    pub async fn admin_find_user(&self, email: &Email) -> Result<UserProfile, SessionError> {
        let user = self.store.user_by_email(email).await?;
        user.map(|user| UserProfile::from(&user))
            .ok_or(SessionError::UnknownUser)
    }

    /// Operators: any user's live sessions.
    pub async fn admin_sessions_of(&self, user_id: UserId) -> Result<Vec<Session>, SessionError> {
        self.registry
            .ask(user_id, |reply| UserMsg::ListSessions { reply })
            .await
    }

    /// Operators: forced logout of every device of `user_id`, with the operator's reason.
    pub async fn admin_logout_all(
        &self,
        user_id: UserId,
        note: Option<String>,
        operator: &Device,
    ) -> Result<usize, SessionError> {
        let ended = self
            .registry
            .ask(user_id, |reply| UserMsg::RevokeAll {
                except: None,
                reason: RevokeReason::Admin,
                note: note.clone(),
                origin: self.policy.operator_origin(operator),
                reply,
            })
            .await?;
        self.confirm_all_ended(user_id, ended).await
    }

    /// Operators: deactivate (ending every session, `account_disabled`) or reactivate an
    /// account, in force on every node before it returns. Returns how many sessions ended.
    pub async fn admin_set_active(
        &self,
        user_id: UserId,
        active: bool,
        note: Option<String>,
        operator: &Device,
    ) -> Result<usize, SessionError> {
        let ended = self
            .registry
            .ask(user_id, |reply| UserMsg::SetActive {
                active,
                note: note.clone(),
                origin: self.policy.operator_origin(operator),
                reply,
            })
            .await?;
        let count = self.confirm_ended(user_id, ended).await?;
        self.cluster
            .confirm(ClusterEvent::UserChanged { user: user_id })
            .await?;
        Ok(count)
    }

    /// The change is committed and out of this node's memory; returns once every other node
    /// has it too. Returns how many sessions ended.
    async fn confirm_ended(
        &self,
        user: UserId,
        ids: Vec<SessionId>,
    ) -> Result<usize, SessionError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.confirm_all_ended(user, ids).await
    }

    /// A change that promises that *all* of the user's sessions (but the caller's) are over
    /// everywhere: confirmed even when this node ended none. Another node may have ended one
    /// a moment before, committed, and still be waiting for its own confirmation while a
    /// node that has not heard it answers from memory; the news makes every node read this
    /// user from the store again (or be fenced and wait out its lease) before the 200.
    async fn confirm_all_ended(
        &self,
        user: UserId,
        ids: Vec<SessionId>,
    ) -> Result<usize, SessionError> {
        let count = ids.len();
        self.cluster
            .confirm(ClusterEvent::SessionsEnded { user, ids })
            .await?;
        Ok(count)
    }

    /// A session was opened: the sessions the limit ended are confirmed everywhere, the new
    /// one is announced (so other nodes need not read it), and its token is signed.
    async fn opened(&self, opened: Opened) -> Result<IssuedSession, SessionError> {
        let user = opened.grant.session.user_id;
        self.confirm_ended(user, opened.ended).await?;
        self.cluster
            .announce(ClusterEvent::SessionOpened(opened.grant.session.clone()))
            .await;
        let mut issued = self.issue(opened.grant)?;
        issued.recovery_codes_left = opened.recovery_codes_left;
        Ok(issued)
    }

    /// The password check behind the brute-force throttle: a locked account is refused before
    /// any hashing (429, right password or not, account or not), and a wrong password counts.
    /// Returns the user and what the throttle held for the account before the check.
    async fn guarded_password_check(
        &self,
        credentials: Credentials,
        device: &Device,
    ) -> Result<(User, Standing), SessionError> {
        let throttle = &self.policy.throttle;
        let account = throttle.account(&credentials.email);
        // Held until the failure, if any, is counted: one check per account at a time.
        let read = self
            .store
            .failure_record_and_user(&account, &credentials.email);
        let (standing, user, _checking) = match throttle.begin_reading(&account, read).await {
            Ok(begun) => begun,
            Err(locked) => {
                // Not recorded per refusal (a flood of them must not flood the trail, nor cost
                // more than the check); the lock itself was, when it began.
                audit("password", None, device.ip.as_deref(), Some(&locked));
                return Err(locked);
            }
        };
        let user = self
            .check_password(credentials, user, &account, device)
            .await?;
        Ok((user, standing))
    }

    /// When the stored hash predates a raise of the scrypt cost: hash the (just verified)
    /// password again at the configured cost, in the background, and store it unless the
    /// password was changed meanwhile. Only a login can do this: nobody else ever has the
    /// password. Called once the login is done.
    fn rehash_if_weaker(&self, user: &User, password: SecretString) {
        if self.hasher.is_weaker_than_configured(&user.password_hash) {
            self.rehash_in_background(user.id, user.password_hash.clone(), password);
        }
    }

    fn rehash_in_background(&self, user: UserId, old: String, password: SecretString) {
        let (hasher, store) = (self.hasher.clone(), self.store.clone());
        tokio::spawn(async move {
            let rehashed = match hasher.hash(password).await {
                Ok(new) => store.replace_password_hash(user, &old, &new).await,
                Err(err) => {
                    tracing::debug!(user_id = %user, error = %err, "rehash skipped");
                    return;
                }
            };
            match rehashed {
                Ok(true) => {
                    tracing::info!(user_id = %user, "password rehashed at the configured cost")
                }
                Ok(false) => {}
                Err(err) => tracing::warn!(user_id = %user, error = %err, "rehash not stored"),
            }
        });
    }

    /// Verifies the password against `user`, the row of the email typed (if any); the row on
    /// success. Every outcome is logged with the account's id when there is one (never the
    /// email typed).
    async fn check_password(
        &self,
        credentials: Credentials,
        user: Option<User>,
        account: &[u8; 32],
        device: &Device,
    ) -> Result<User, SessionError> {
        let stored = user.as_ref().map(|u| u.password_hash.as_str());
        let verified = self.hasher.verify(credentials.password, stored).await;
        let user_id = user.as_ref().map(|u| u.id);
        let outcome = match (verified, user) {
            (Err(err), _) => Err(err.into()),
            (Ok(true), Some(user)) if user.is_active => Ok(user),
            (Ok(true), Some(_)) => Err(AuthError::AccountInactive.into()),
            _ => Err(AuthError::InvalidCredentials.into()),
        };
        audit(
            "password",
            user_id,
            device.ip.as_deref(),
            outcome.as_ref().err(),
        );
        // Successes are recorded by the user's actor with what they led to; a refusal here,
        // named by the account's id, or for an email with no account by the throttle's keyed
        // hash of it (the same key either way for the same email).
        if let Err(err @ SessionError::Auth(_)) = &outcome {
            let now = Utc::now();
            let event = |kind| {
                let mut event = AuthEvent::new(now, kind, user_id, self.policy.origin(device));
                if user_id.is_none() {
                    event.account_hash = Some(*account);
                }
                event
            };
            self.record(event(EventKind::LoginFailed).reason(refusal_reason(err)))
                .await;
            let wrong_password = matches!(err, SessionError::Auth(AuthError::InvalidCredentials));
            if wrong_password
                && self
                    .policy
                    .throttle
                    .fail(self.store.as_ref(), account, now)
                    .await
            {
                self.record(event(EventKind::LoginThrottled).reason("account_locked"))
                    .await;
            }
        }
        outcome
    }

    fn issue(&self, grant: SessionGrant) -> Result<IssuedSession, SessionError> {
        let access_token = self.tokens.issue(&grant.session, Utc::now())?;
        Ok(IssuedSession {
            access_token,
            session: grant.session,
            user: Arc::unwrap_or_clone(grant.user),
            recovery_codes_left: None,
        })
    }
}

fn new_recovery_codes() -> Result<RecoveryCodes, SessionError> {
    RecoveryCodes::generate().map_err(|e| SessionError::Unavailable(format!("no randomness: {e}")))
}
