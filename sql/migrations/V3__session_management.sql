-- Forced logouts record the operator's reason as free text beside the enum-like revoke_reason.
ALTER TABLE sessions ADD COLUMN revoke_note VARCHAR(255) NULL AFTER revoke_reason;
-- The idle sweep finds live sessions by last activity; the retention prune finds ended rows
-- by when they were revoked.
ALTER TABLE sessions ADD KEY sessions_idle (revoked_at, last_seen_at);
