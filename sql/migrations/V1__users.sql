-- Accounts. Emails are stored lower-cased by the service, so the unique key is the account key.
CREATE TABLE users (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    email           VARCHAR(254)    NOT NULL,
    password_hash   VARCHAR(255)    NOT NULL,
    first_name      VARCHAR(100)    NOT NULL,
    last_name       VARCHAR(100)    NOT NULL,
    preferred_name  VARCHAR(100)    NULL,
    phone_number    VARCHAR(32)     NULL,
    address         VARCHAR(500)    NULL,
    is_active       BOOLEAN         NOT NULL DEFAULT TRUE,
    mfa_enabled     BOOLEAN         NOT NULL DEFAULT FALSE,
    totp_secret     VARCHAR(128)    NULL,
    -- Newest TOTP time step ever accepted: the replay guard. NULL until the first MFA login.
    totp_last_step  BIGINT UNSIGNED NULL,
    created_at      DATETIME(6)     NOT NULL,
    updated_at      DATETIME(6)     NOT NULL,
    UNIQUE KEY users_email_unique (email)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
