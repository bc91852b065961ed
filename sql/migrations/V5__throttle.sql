-- Per-account failure accounting for the brute-force throttle. Keyed by a keyed hash (HMAC) of
-- the normalised email, so an email with no account locks exactly like a real one, and the
-- table names nobody. Wrong passwords and wrong codes count alike; a new password step does
-- not reset anything; a successful login deletes the row.
CREATE TABLE auth_failures (
    key_hash      BINARY(32)   NOT NULL PRIMARY KEY,
    failures      INT UNSIGNED NOT NULL,
    window_start  DATETIME(6)  NOT NULL,
    locked_until  DATETIME(6)  NULL,
    lockouts      INT UNSIGNED NOT NULL,
    updated_at    DATETIME(6)  NOT NULL,
    KEY auth_failures_updated (updated_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
