-- One row per login on one device. Rows are kept after they end (revoked_at/revoke_reason),
-- so an operator can see who was logged out, when and why.
CREATE TABLE sessions (
    id             CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
    user_id        BIGINT UNSIGNED NOT NULL,
    created_at     DATETIME(6)     NOT NULL,
    last_seen_at   DATETIME(6)     NOT NULL,
    expires_at     DATETIME(6)     NOT NULL,
    revoked_at     DATETIME(6)     NULL,
    revoke_reason  VARCHAR(32)     NULL,
    user_agent     VARCHAR(512)    NULL,
    ip             VARCHAR(45)     NULL,
    CONSTRAINT sessions_user_fk FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
    -- A user actor loads its user's live sessions at start: (user_id, revoked_at, expires_at).
    KEY sessions_user_live (user_id, revoked_at, expires_at),
    -- Expiry sweeps scan by end time.
    KEY sessions_expires (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
