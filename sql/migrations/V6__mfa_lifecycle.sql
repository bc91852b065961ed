-- Two-factor life cycle, secrets sealed at rest, recovery codes and the audit trail.

-- TOTP secrets are sealed (AES-256-GCM) under one of the service's keys: the key's id, the
-- nonce and the ciphertext. The active secret and a pending one (issued by setup, in force
-- only once enabled with a code). The clear `totp_secret` column is emptied by the service at
-- start (`finsec migrate` or `serve`), which seals each secret it finds there: SQL cannot
-- encrypt under a key the database never sees.
ALTER TABLE users
    ADD COLUMN totp_key_id          VARCHAR(32)     NULL,
    ADD COLUMN totp_nonce           VARBINARY(12)   NULL,
    ADD COLUMN totp_ciphertext      VARBINARY(128)  NULL,
    ADD COLUMN pending_key_id       VARCHAR(32)     NULL,
    ADD COLUMN pending_nonce        VARBINARY(12)   NULL,
    ADD COLUMN pending_ciphertext   VARBINARY(128)  NULL,
    ADD COLUMN pending_at           DATETIME(6)     NULL;

-- Ten single-use codes per user, each only as SHA-256 over its own random salt and the code.
CREATE TABLE recovery_codes (
    user_id     BIGINT UNSIGNED  NOT NULL,
    code_id     TINYINT UNSIGNED NOT NULL,
    salt        BINARY(16)       NOT NULL,
    code_hash   BINARY(32)       NOT NULL,
    created_at  DATETIME(6)      NOT NULL,
    used_at     DATETIME(6)      NULL,
    PRIMARY KEY (user_id, code_id),
    CONSTRAINT recovery_codes_user_fk FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The audit trail: written in the transaction of the change it records where there is one.
-- Never a password, code, token or secret. An email with no account appears only as its keyed
-- hash (account_hash); ids grow with time, so `id` is the pagination cursor.
CREATE TABLE auth_events (
    id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at            DATETIME(6)     NOT NULL,
    kind          VARCHAR(40)     NOT NULL,
    outcome       VARCHAR(16)     NOT NULL,
    -- who: user (the account's owner), operator (admin API or CLI) or system (expiry)
    initiator     VARCHAR(16)     NOT NULL DEFAULT 'system',
    user_id       BIGINT UNSIGNED NULL,
    account_hash  BINARY(32)      NULL,
    session_id    CHAR(36) CHARACTER SET ascii NULL,
    reason        VARCHAR(64)     NULL,
    note          VARCHAR(255)    NULL,
    node_id       VARCHAR(64)     NULL,
    ip            VARCHAR(64)     NULL,
    user_agent    VARCHAR(512)    NULL,
    KEY auth_events_user (user_id, id),
    KEY auth_events_at (at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
