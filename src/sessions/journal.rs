//! The pending-revocation journal: revocations in force in memory whose write to the store has
//! not committed yet (the database was down or slow), kept durably until it does.
//!
//! Ending sessions fails closed: the sessions leave memory first, then the store is written.
//! When that write fails, the caller hears 503, yet the revocation must never be undone: not
//! by a retry that never comes (the process is killed), not by a restart that reloads the
//! sessions from the store. So before the 503 the revocation is appended here and the file is
//! flushed to disk (`fsync`); at start every entry still pending is in force again before the
//! first request is served (actors treat its sessions as dead), and the [`PendingWriter`]
//! writes the entries to the store once it answers, then settles them.
//!
//! The file is one JSON object a line: an entry (`{"seq":…,"user":…,"ids":[…],…}`) or a
//! settlement (`{"settled":seq}`). Appends only; when nothing is pending the file is emptied.
//! A line cut short by a crash mid-append is ignored: its revocation was never acknowledged
//! as durable (the caller was still waiting). The file is locked while open, so two instances
//! can never share one. The embedded store cannot fail, so it gets a journal in memory.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, ClusterEvent};
use crate::domain::{Initiator, Origin, Revocation, RevokeReason, SessionId, UserId};
use crate::store::DynStore;

/// One revocation waiting for its write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRevocation {
    pub seq: u64,
    pub user: UserId,
    pub ids: Vec<SessionId>,
    pub revocation: Revocation,
}

/// Cheap to clone: every clone is the same journal.
#[derive(Clone)]
pub struct Journal(Arc<Mutex<Inner>>);

struct Inner {
    /// `None` for the in-memory journal, and once released at shutdown.
    file: Option<File>,
    path: Option<PathBuf>,
    next_seq: u64,
    pending: BTreeMap<u64, PendingRevocation>,
    /// Every session id in `pending`: what actors ask on the request path.
    dead: HashSet<SessionId>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Journal")
            .field("path", &inner.path)
            .field("pending", &inner.pending.len())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the pending-revocation journal {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "the pending-revocation journal {0} is in use by another instance (each instance needs \
         its own database.pending_revocations)"
    )]
    Locked(PathBuf),
}

impl Journal {
    /// For the embedded store, whose writes cannot fail: nothing to keep across a restart.
    pub fn in_memory() -> Self {
        Self(Arc::new(Mutex::new(Inner {
            file: None,
            path: None,
            next_seq: 1,
            pending: BTreeMap::new(),
            dead: HashSet::new(),
        })))
    }

    /// Opens (creating it and its folder if need be) and locks the journal at `path`, and
    /// reads back every entry not settled. Blocking: called once at start.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let failed = |source| JournalError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(failed)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Locked(path.to_owned()));
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(failed(err)),
        }
        let mut pending = BTreeMap::new();
        let mut next_seq = 1;
        let mut text = String::new();
        io::Read::read_to_string(&mut &file, &mut text).map_err(failed)?;
        if !text.is_empty() && !text.ends_with('\n') {
            // End the line a crash cut short, so the next entry starts a line of its own.
            (&file).write_all(b"\n").map_err(failed)?;
        }
        for line in text.lines() {
            match serde_json::from_str::<Line>(line) {
                Ok(Line::Entry(entry)) => {
                    next_seq = next_seq.max(entry.seq + 1);
                    if let Some(entry) = entry.into_pending() {
                        pending.insert(entry.seq, entry);
                    }
                }
                Ok(Line::Settled { settled }) => {
                    pending.remove(&settled);
                }
                // Cut short by a crash mid-append: never acknowledged as durable.
                Err(_) => {
                    tracing::warn!(path = %path.display(), "journal line unreadable; skipped")
                }
            }
        }
        let dead = pending
            .values()
            .flat_map(|p| p.ids.iter().copied())
            .collect();
        if !pending.is_empty() {
            tracing::warn!(pending = pending.len(), path = %path.display(),
                "revocations not yet written to the store are in force again");
        }
        Ok(Self(Arc::new(Mutex::new(Inner {
            file: Some(file),
            path: Some(path.to_owned()),
            next_seq,
            pending,
            dead,
        }))))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (each step is one insert
        // or remove), so a poisoned lock is still usable.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `revocation` of `ids` until [`settle`](Self::settle): in force in this process
    /// at once, and on disk (flushed) when this returns `Ok`. `Err` means it is in force until
    /// this process ends but would not survive a crash; the caller must say so loudly.
    /// Blocking file I/O runs off the runtime.
    pub async fn record(
        &self,
        user: UserId,
        ids: Vec<SessionId>,
        revocation: Revocation,
    ) -> io::Result<u64> {
        let journal = self.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut inner = journal.lock();
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let entry = PendingRevocation {
                seq,
                user,
                ids,
                revocation,
            };
            inner.dead.extend(entry.ids.iter().copied());
            let line = Line::Entry(Entry::from(&entry));
            inner.pending.insert(seq, entry);
            inner.append(&line, true).map(|()| seq)
        })
        .await;
        written.unwrap_or_else(|join| Err(io::Error::other(join)))
    }

    /// The entry is in the store now: forget it. When nothing is left pending, the file is
    /// emptied. Not flushed: a settlement lost in a crash only means one idempotent rewrite.
    pub fn settle(&self, seq: u64) {
        let mut inner = self.lock();
        let Some(entry) = inner.pending.remove(&seq) else {
            return;
        };
        for id in &entry.ids {
            inner.dead.remove(id);
        }
        // An id may sit in two entries (a logout, then a logout-all): keep the others'.
        let still: Vec<SessionId> = inner
            .pending
            .values()
            .flat_map(|p| p.ids.iter().copied())
            .filter(|id| entry.ids.contains(id))
            .collect();
        inner.dead.extend(still);
        let outcome = if inner.pending.is_empty() {
            inner.truncate()
        } else {
            inner.append(&Line::Settled { settled: seq }, false)
        };
        if let Err(err) = outcome {
            tracing::warn!(error = %err, "journal settlement not recorded (the entry will be written again)");
        }
    }

    /// Whether `id` was revoked by an entry still pending (so it is dead, whatever the store
    /// says).
    pub fn is_pending(&self, id: &SessionId) -> bool {
        self.lock().dead.contains(id)
    }

    /// Every entry still pending, oldest first.
    pub fn pending(&self) -> Vec<PendingRevocation> {
        self.lock().pending.values().cloned().collect()
    }

    /// Unlocks and closes the file (shutdown), so another process, or a new instance in this
    /// one, may open it. What is pending stays in the file.
    pub fn release(&self) {
        let mut inner = self.lock();
        if let Some(file) = inner.file.take() {
            let _ = file.sync_data();
            let _ = file.unlock();
        }
    }
}

impl Inner {
    fn append(&mut self, line: &Line, flush: bool) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return if self.path.is_some() {
                Err(io::Error::other("journal already released"))
            } else {
                Ok(())
            };
        };
        let mut bytes = serde_json::to_vec(line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        // One write of the whole line: a crash leaves it whole or cut short, never interleaved.
        file.write_all(&bytes)?;
        if flush { file.sync_data() } else { Ok(()) }
    }

    fn truncate(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => {
                file.set_len(0)?;
                file.sync_data()
            }
            None => Ok(()),
        }
    }
}

/// A line of the file.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Entry(Entry),
    Settled { settled: u64 },
}

#[derive(Serialize, Deserialize)]
struct Entry {
    seq: u64,
    user: u64,
    ids: Vec<String>,
    at: DateTime<Utc>,
    reason: String,
    note: Option<String>,
    initiator: String,
    node: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
}

impl From<&PendingRevocation> for Entry {
    fn from(p: &PendingRevocation) -> Self {
        let r = &p.revocation;
        Self {
            seq: p.seq,
            user: p.user.get(),
            ids: p.ids.iter().map(ToString::to_string).collect(),
            at: r.at,
            reason: r.reason.as_str().to_owned(),
            note: r.note.clone(),
            initiator: r.origin.initiator.as_str().to_owned(),
            node: r.origin.node.clone(),
            ip: r.origin.ip.clone(),
            user_agent: r.origin.user_agent.clone(),
        }
    }
}

impl Entry {
    /// `None` (and a warning) for an entry this build cannot read back.
    fn into_pending(self) -> Option<PendingRevocation> {
        let parsed = (|| {
            let user = UserId::new(self.user);
            let ids = self
                .ids
                .iter()
                .map(|id| id.parse().ok())
                .collect::<Option<Vec<SessionId>>>()?;
            let reason: RevokeReason = self.reason.parse().ok()?;
            let initiator: Initiator = self.initiator.parse().ok()?;
            let origin = Origin {
                initiator,
                node: self.node,
                ip: self.ip,
                user_agent: self.user_agent,
            };
            let revocation = Revocation::new(self.at, reason)
                .by(origin)
                .with_note(self.note);
            Some(PendingRevocation {
                seq: self.seq,
                user,
                ids,
                revocation,
            })
        })();
        if parsed.is_none() {
            tracing::error!(seq = self.seq, "journal entry unreadable; skipped");
        }
        parsed
    }
}

/// Writes pending entries to the store, every `interval` and once at start, then settles
/// them and tells the other nodes (whose memory may still hold the sessions: the caller of
/// the original request heard 503, so nobody confirmed then).
pub struct PendingWriter;

pub enum PendingWriterMsg {
    Write,
}

pub struct PendingWriterArgs {
    pub journal: Journal,
    pub store: DynStore,
    pub cluster: Cluster,
    pub interval: std::time::Duration,
}

impl Actor for PendingWriter {
    type Msg = PendingWriterMsg;
    type State = PendingWriterArgs;
    type Arguments = PendingWriterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PendingWriterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // At once: what a previous run left is written as soon as the store answers.
        let _ = myself.cast(PendingWriterMsg::Write);
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PendingWriterMsg::Write => {
                write_pending(state).await;
                // Scheduled once this round is done: a hung store makes rounds rarer, never a
                // queue of them.
                myself.send_after(state.interval, || PendingWriterMsg::Write);
            }
        }
        Ok(())
    }
}

/// Oldest first; stops at the first failure (the store is down: the rest would fail too).
async fn write_pending(state: &PendingWriterArgs) {
    for entry in state.journal.pending() {
        // Idempotent: a session already ended keeps its first reason and time.
        match state
            .store
            .revoke_sessions(&entry.ids, &entry.revocation)
            .await
        {
            Ok(()) => {
                state.journal.settle(entry.seq);
                tracing::info!(user_id = %entry.user, sessions = entry.ids.len(),
                    reason = %entry.revocation.reason, "delayed revocation written");
                tell_cluster(&state.cluster, entry.user, entry.ids);
            }
            Err(err) => {
                tracing::warn!(error = %err, pending = state.journal.pending().len(),
                    "pending revocations not written yet; will retry");
                return;
            }
        }
    }
}

/// Sessions ended without a confirmed 200: the other nodes hear of it in the background.
pub fn tell_cluster(cluster: &Cluster, user: UserId, ids: Vec<SessionId>) {
    if !cluster.is_clustered() || ids.is_empty() {
        return;
    }
    let cluster = cluster.clone();
    tokio::spawn(async move {
        let event = ClusterEvent::SessionsEnded { user, ids };
        if let Err(err) = cluster.confirm(event).await {
            tracing::warn!(user_id = %user, error = %err, "other nodes not told of ended sessions");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revocation() -> Revocation {
        Revocation::new(Utc::now(), RevokeReason::Logout)
            .by(Origin {
                initiator: Initiator::User,
                node: Some("node-a".into()),
                ip: Some("192.0.2.1".into()),
                user_agent: Some("test".into()),
            })
            .with_note(Some("lost phone".into()))
    }

    fn temp_path(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("finsec-journal-{}-{}", name, uuid::Uuid::new_v4()));
        dir.join("pending.log")
    }

    #[tokio::test]
    async fn entries_survive_a_reopen_until_settled() {
        let path = temp_path("reopen");
        let user = UserId::new(7);
        let (a, b) = (SessionId::random(), SessionId::random());
        let journal = Journal::open(&path).unwrap();
        let first = journal.record(user, vec![a], revocation()).await.unwrap();
        let second = journal.record(user, vec![b], revocation()).await.unwrap();
        journal.settle(first);
        // No release: as after kill -9 (the lock goes with the process; here, with the file).
        drop(journal);

        let reopened = Journal::open(&path).unwrap();
        assert!(!reopened.is_pending(&a), "settled entries stay settled");
        assert!(reopened.is_pending(&b));
        let pending = reopened.pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].seq, second);
        assert_eq!(pending[0].ids, vec![b]);
        assert_eq!(
            pending[0].revocation,
            revocation_like(&pending[0].revocation)
        );
        // New entries never reuse a number.
        let third = reopened.record(user, vec![a], revocation()).await.unwrap();
        assert!(third > second);
        reopened.settle(second);
        reopened.settle(third);
        assert!(reopened.pending().is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "emptied");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// The fields that travel through the file, compared with what was recorded.
    fn revocation_like(read: &Revocation) -> Revocation {
        let mut expected = revocation();
        expected.at = read.at;
        expected
    }

    #[tokio::test]
    async fn a_line_cut_short_by_a_crash_is_skipped() {
        let path = temp_path("torn");
        let user = UserId::new(7);
        let kept = SessionId::random();
        let journal = Journal::open(&path).unwrap();
        journal
            .record(user, vec![kept], revocation())
            .await
            .unwrap();
        drop(journal);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"seq":2,"user":7,"ids":["#).unwrap();
        drop(file);
        let reopened = Journal::open(&path).unwrap();
        assert!(reopened.is_pending(&kept));
        assert_eq!(reopened.pending().len(), 1);
        // The next entry starts a line of its own and reads back.
        let next = SessionId::random();
        reopened
            .record(user, vec![next], revocation())
            .await
            .unwrap();
        drop(reopened);
        let again = Journal::open(&path).unwrap();
        assert!(again.is_pending(&kept) && again.is_pending(&next));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn an_id_in_two_entries_stays_dead_until_both_settle() {
        let journal = Journal::in_memory();
        let user = UserId::new(7);
        let id = SessionId::random();
        let one = journal.record(user, vec![id], revocation()).await.unwrap();
        let two = journal.record(user, vec![id], revocation()).await.unwrap();
        journal.settle(one);
        assert!(journal.is_pending(&id));
        journal.settle(two);
        assert!(!journal.is_pending(&id));
    }

    #[test]
    fn two_instances_cannot_share_a_file() {
        let path = temp_path("locked");
        let first = Journal::open(&path).unwrap();
        assert!(matches!(Journal::open(&path), Err(JournalError::Locked(_))));
        first.release();
        assert!(Journal::open(&path).is_ok(), "released at shutdown");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
