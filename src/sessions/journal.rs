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

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, ClusterEvent};
use crate::domain::{Revocation, RevocationRecord, SessionId, UserId};
use crate::store::{DynStore, StoreError};

/// One revocation waiting for its write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRevocation {
    pub seq: u64,
    pub user: UserId,
    pub ids: Vec<SessionId>,
    pub revocation: Revocation,
}

/// How long a settled entry's ids stay dead here after the entry is settled: an actor whose
/// store read began before the write committed may still see the row live when it finishes,
/// and a store read lasts at most `database.timeout`. Kept far longer than that.
const TOMBSTONE_MIN: Duration = Duration::from_secs(60);

/// Cheap to clone: every clone is the same journal.
#[derive(Clone)]
pub struct Journal(Arc<Shared>);

struct Shared {
    /// What is pending and which ids are dead: asked on the request path, so never held
    /// during file I/O.
    index: Mutex<Index>,
    /// The file, and `None` once released (or for the in-memory journal). Lock order: `file`
    /// before `index`, never the other way.
    file: Mutex<Option<File>>,
    path: Option<PathBuf>,
    /// How long settled ids stay dead ([`TOMBSTONE_MIN`] at least).
    keep_settled: Duration,
}

#[derive(Default)]
struct Index {
    next_seq: u64,
    pending: BTreeMap<u64, PendingRevocation>,
    /// Every session id in `pending`, with how many entries name it.
    dead: HashMap<SessionId, usize>,
    /// Ids of settled entries, until their tombstone expires.
    settled: HashMap<SessionId, Instant>,
}

impl Index {
    fn is_dead(&self, id: &SessionId, now: Instant) -> bool {
        self.dead.contains_key(id) || self.settled.get(id).is_some_and(|until| *until > now)
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.0.path)
            .field("pending", &self.index().pending.len())
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
    /// A whole line that cannot be read back: its revocation would be lost, so the service
    /// refuses to start rather than revive sessions. (A line cut short by a crash is only
    /// ever the last, and is skipped.)
    #[error(
        "the pending-revocation journal {path} has an unreadable entry on line {line}; it may \
         hold revocations in force: inspect it (each line is JSON) and repair or remove it"
    )]
    Unreadable { path: PathBuf, line: usize },
}

impl Journal {
    fn with(file: Option<File>, path: Option<PathBuf>, index: Index, keep: Duration) -> Self {
        Self(Arc::new(Shared {
            index: Mutex::new(index),
            file: Mutex::new(file),
            path,
            keep_settled: keep.max(TOMBSTONE_MIN),
        }))
    }

    /// For the embedded store, whose writes cannot fail: nothing to keep across a restart.
    pub fn in_memory() -> Self {
        let index = Index {
            next_seq: 1,
            ..Index::default()
        };
        Self::with(None, None, index, TOMBSTONE_MIN)
    }

    /// Opens (creating it and its folder if need be, readable by this user only) and locks
    /// the journal at `path`, and reads back every entry not settled. Settled ids stay dead
    /// for `keep_settled` (give it a few `database.timeout`s). Blocking: called once at start.
    pub fn open(path: &Path, keep_settled: Duration) -> Result<Self, JournalError> {
        let failed = |source| JournalError::Open {
            path: path.to_owned(),
            source,
        };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let created = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(failed)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Locked(path.to_owned()));
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(failed(err)),
        }
        if created && let Some(dir) = dir {
            // The new file's name must survive a power loss too.
            File::open(dir).and_then(|d| d.sync_all()).map_err(failed)?;
        }
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut &file, &mut bytes).map_err(failed)?;
        let mut index = Index {
            next_seq: 1,
            ..Index::default()
        };
        let complete = bytes.ends_with(b"\n");
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        let whole = lines.len() - 1; // after the last newline: the unterminated tail, if any
        for (n, line) in lines.iter().enumerate() {
            if n == whole {
                if !line.is_empty() {
                    // Cut short by a crash mid-append: never acknowledged as durable.
                    tracing::warn!(path = %path.display(), "journal ends in a partial line; skipped");
                }
                break;
            }
            let unreadable = || JournalError::Unreadable {
                path: path.to_owned(),
                line: n + 1,
            };
            match serde_json::from_slice::<Line>(line).map_err(|_| unreadable())? {
                Line::Entry(entry) => {
                    index.next_seq = index.next_seq.max(entry.seq + 1);
                    let entry = entry.into_pending().ok_or_else(unreadable)?;
                    for id in &entry.ids {
                        *index.dead.entry(*id).or_default() += 1;
                    }
                    index.pending.insert(entry.seq, entry);
                }
                Line::Settled { settled } => {
                    if let Some(entry) = index.pending.remove(&settled) {
                        forget_ids(&mut index.dead, &entry.ids);
                    }
                }
            }
        }
        if !complete && !bytes.is_empty() {
            // Cut the partial line off, so the next entry starts a line of its own.
            let whole_len = bytes.len() - lines[whole].len();
            file.set_len(whole_len as u64).map_err(failed)?;
        }
        if !index.pending.is_empty() {
            tracing::warn!(pending = index.pending.len(), path = %path.display(),
                "revocations not yet written to the store are in force again");
        }
        Ok(Self::with(
            Some(file),
            Some(path.to_owned()),
            index,
            keep_settled,
        ))
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // Each step under the lock is a few inserts or removes; a panic between them leaves
        // at worst an id dead too long, never one alive too soon. Poison is not fatal.
        self.0.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn file(&self) -> MutexGuard<'_, Option<File>> {
        self.0.file.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `revocation` of `ids` until [`settle`](Self::settle): in force in this process
    /// at once, and on disk (flushed) when this returns `Ok`. `Err` means it is in force until
    /// this process ends but would not survive a crash; the caller must say so loudly.
    /// Nothing to keep (no ids) is `Ok(None)`. Blocking file I/O runs off the runtime.
    pub async fn record(
        &self,
        user: UserId,
        ids: Vec<SessionId>,
        revocation: Revocation,
    ) -> io::Result<Option<u64>> {
        if ids.is_empty() {
            return Ok(None);
        }
        // In force first (before the write, so no request slips through meanwhile).
        let entry = {
            let mut index = self.index();
            let seq = index.next_seq;
            index.next_seq += 1;
            for id in &ids {
                *index.dead.entry(*id).or_default() += 1;
            }
            let entry = PendingRevocation {
                seq,
                user,
                ids,
                revocation,
            };
            index.pending.insert(seq, entry.clone());
            entry
        };
        let journal = self.clone();
        let line = Line::Entry(Entry::from(&entry));
        let written = tokio::task::spawn_blocking(move || journal.append(&line, true)).await;
        written
            .unwrap_or_else(|join| Err(io::Error::other(join)))
            .map(|()| Some(entry.seq))
    }

    /// The entry is in the store now: forget it (its ids stay dead a while longer, see
    /// [`TOMBSTONE_MIN`]). When nothing is left pending, the file is emptied. Not flushed: a
    /// settlement lost in a crash only means one idempotent rewrite.
    pub async fn settle(&self, seq: u64) {
        {
            let mut index = self.index();
            let Some(entry) = index.pending.remove(&seq) else {
                return;
            };
            forget_ids(&mut index.dead, &entry.ids);
            let until = Instant::now() + self.0.keep_settled;
            let now = Instant::now();
            index.settled.retain(|_, expires| *expires > now);
            for id in entry.ids {
                index.settled.insert(id, until);
            }
        }
        let journal = self.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut file = journal.file();
            // Under the file lock: a record that lands in the index after this check
            // appends after the truncation, never before it.
            if journal.index().pending.is_empty() {
                match file.as_mut() {
                    Some(file) => file.set_len(0).and_then(|()| file.sync_data()),
                    None => Ok(()),
                }
            } else {
                drop(file);
                journal.append(&Line::Settled { settled: seq }, false)
            }
        })
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join)));
        if let Err(err) = outcome {
            tracing::warn!(error = %err, "journal settlement not recorded (the entry will be written again)");
        }
    }

    /// Whether `id` was ended by an entry still pending, or settled moments ago (so it is
    /// dead, whatever a store read that began earlier says).
    pub fn is_pending(&self, id: &SessionId) -> bool {
        self.index().is_dead(id, Instant::now())
    }

    /// Every entry still pending, oldest first.
    pub fn pending(&self) -> Vec<PendingRevocation> {
        self.index().pending.values().cloned().collect()
    }

    /// Unlocks and closes the file (shutdown), so another process, or a new instance in this
    /// one, may open it. What is pending stays in the file.
    pub fn release(&self) {
        if let Some(file) = self.file().take() {
            let _ = file.sync_data();
            let _ = file.unlock();
        }
    }

    /// One line, written whole or not at all: a write that fails half way is cut back off,
    /// so the next line never continues a broken one. Blocking.
    fn append(&self, line: &Line, flush: bool) -> io::Result<()> {
        let mut guard = self.file();
        let Some(file) = guard.as_mut() else {
            return if self.0.path.is_some() {
                Err(io::Error::other("journal already released"))
            } else {
                Ok(())
            };
        };
        let mut bytes = serde_json::to_vec(line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        let before = file.metadata()?.len();
        if let Err(err) = file.write_all(&bytes) {
            let _ = file.set_len(before);
            return Err(err);
        }
        if flush { file.sync_data() } else { Ok(()) }
    }
}

/// One fewer entry names each of `ids`.
fn forget_ids(dead: &mut HashMap<SessionId, usize>, ids: &[SessionId]) {
    for id in ids {
        if let Some(count) = dead.get_mut(id) {
            *count -= 1;
            if *count == 0 {
                dead.remove(id);
            }
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
    #[serde(flatten)]
    revocation: RevocationRecord,
}

impl From<&PendingRevocation> for Entry {
    fn from(p: &PendingRevocation) -> Self {
        Self {
            seq: p.seq,
            user: p.user.get(),
            ids: p.ids.iter().map(ToString::to_string).collect(),
            revocation: (&p.revocation).into(),
        }
    }
}

impl Entry {
    /// `None` (and an error logged) for an entry this build cannot read back.
    fn into_pending(self) -> Option<PendingRevocation> {
        let seq = self.seq;
        let ids = self
            .ids
            .iter()
            .map(|id| id.parse().ok())
            .collect::<Option<Vec<SessionId>>>();
        let parsed = ids
            .zip(self.revocation.parse())
            .map(|(ids, revocation)| PendingRevocation {
                seq,
                user: UserId::new(self.user),
                ids,
                revocation,
            });
        if parsed.is_none() {
            tracing::error!(seq, "journal entry unreadable");
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

/// Oldest first. The store unreachable: stop (the rest would wait out the same timeout). Any
/// other failure is this entry's: log it and go on with the others.
async fn write_pending(state: &PendingWriterArgs) {
    for entry in state.journal.pending() {
        // Idempotent: a session already ended keeps its first reason and time.
        match state
            .store
            .revoke_sessions(&entry.ids, &entry.revocation)
            .await
        {
            Ok(()) => {
                state.journal.settle(entry.seq).await;
                tracing::info!(user_id = %entry.user, sessions = entry.ids.len(),
                    reason = %entry.revocation.reason, "delayed revocation written");
                tell_cluster(&state.cluster, entry.user, entry.ids);
            }
            Err(err @ StoreError::Unavailable(_)) => {
                tracing::warn!(error = %err, pending = state.journal.pending().len(),
                    "pending revocations not written yet; will retry");
                return;
            }
            Err(err) => tracing::error!(user_id = %entry.user, seq = entry.seq, error = %err,
                "a pending revocation cannot be written; it stays in force and is retried"),
        }
    }
}

/// Sessions ended without a confirmed 200: the other nodes hear of it in the background.
pub fn tell_cluster(cluster: &Cluster, user: UserId, ids: Vec<SessionId>) {
    if ids.is_empty() {
        return;
    }
    tell(cluster, ClusterEvent::SessionsEnded { user, ids });
}

/// A revocation whose write failed: the other nodes keep it in their journals too.
pub fn tell_cluster_unwritten(
    cluster: &Cluster,
    user: UserId,
    ids: Vec<SessionId>,
    revocation: Revocation,
) {
    if ids.is_empty() {
        return;
    }
    let event = ClusterEvent::SessionsEndedUnwritten {
        user,
        ids,
        revocation,
    };
    tell(cluster, event);
}

fn tell(cluster: &Cluster, event: ClusterEvent) {
    if !cluster.is_clustered() {
        return;
    }
    let cluster = cluster.clone();
    tokio::spawn(async move {
        if let Err(err) = cluster.confirm(event).await {
            tracing::warn!(error = %err, "other nodes not told of ended sessions");
        }
    });
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::domain::{Initiator, Origin, RevokeReason};

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
        let journal = Journal::open(&path, Duration::ZERO).unwrap();
        let first = record(&journal, vec![a]).await;
        let second = record(&journal, vec![b]).await;
        journal.settle(first).await;
        // No release: as after kill -9 (the lock goes with the process; here, with the file).
        drop(journal);

        let reopened = Journal::open(&path, Duration::ZERO).unwrap();
        assert!(!reopened.is_pending(&a), "settled entries stay settled");
        assert!(reopened.is_pending(&b));
        let pending = reopened.pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].seq, second);
        assert_eq!(pending[0].ids, vec![b]);
        assert_eq!(pending[0].user, user);
        assert_eq!(
            pending[0].revocation,
            revocation_like(&pending[0].revocation)
        );
        // New entries never reuse a number.
        let third = record(&reopened, vec![a]).await;
        assert!(third > second);
        reopened.settle(second).await;
        reopened.settle(third).await;
        assert!(reopened.pending().is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "emptied");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    async fn record(journal: &Journal, ids: Vec<SessionId>) -> u64 {
        journal
            .record(UserId::new(7), ids, revocation())
            .await
            .unwrap()
            .expect("an entry")
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
        let kept = SessionId::random();
        let journal = Journal::open(&path, Duration::ZERO).unwrap();
        record(&journal, vec![kept]).await;
        drop(journal);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"seq":2,"user":7,"ids":["#).unwrap();
        drop(file);
        let reopened = Journal::open(&path, Duration::ZERO).unwrap();
        assert!(reopened.is_pending(&kept));
        assert_eq!(reopened.pending().len(), 1);
        // The next entry starts a line of its own and reads back.
        let next = SessionId::random();
        record(&reopened, vec![next]).await;
        drop(reopened);
        let again = Journal::open(&path, Duration::ZERO).unwrap();
        assert!(again.is_pending(&kept) && again.is_pending(&next));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn a_whole_line_that_cannot_be_read_refuses_to_start() {
        let path = temp_path("corrupt");
        let journal = Journal::open(&path, Duration::ZERO).unwrap();
        record(&journal, vec![SessionId::random()]).await;
        drop(journal);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":2,\"user\":7,\"ids\":[\"not-a-uuid\"],\"at\":\"x\"}\n")
            .unwrap();
        drop(file);
        assert!(matches!(
            Journal::open(&path, Duration::ZERO),
            Err(JournalError::Unreadable { line: 2, .. })
        ));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn settled_ids_stay_dead_for_a_while_and_shared_ids_until_every_entry_settles() {
        let journal = Journal::in_memory();
        let id = SessionId::random();
        let one = record(&journal, vec![id]).await;
        let two = record(&journal, vec![id]).await;
        journal.settle(one).await;
        assert!(journal.is_pending(&id));
        journal.settle(two).await;
        // A store read that began before the write committed may still return the row live:
        // the tombstone outlasts it.
        let later = Instant::now() + Duration::from_secs(30);
        assert!(journal.index().is_dead(&id, later));
        let much_later = Instant::now() + TOMBSTONE_MIN + Duration::from_secs(1);
        assert!(!journal.index().is_dead(&id, much_later));
    }

    #[tokio::test]
    async fn nothing_to_keep_is_no_entry() {
        let journal = Journal::in_memory();
        let kept = journal
            .record(UserId::new(7), vec![], revocation())
            .await
            .unwrap();
        assert_eq!(kept, None);
        assert!(journal.pending().is_empty());
    }

    #[test]
    fn two_instances_cannot_share_a_file_which_only_its_user_reads() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_path("locked");
        let first = Journal::open(&path, Duration::ZERO).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            Journal::open(&path, Duration::ZERO),
            Err(JournalError::Locked(_))
        ));
        first.release();
        assert!(
            Journal::open(&path, Duration::ZERO).is_ok(),
            "released at shutdown"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
