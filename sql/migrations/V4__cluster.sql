-- Several instances on one database (issue: many instances, one truth).

-- The MFA challenges opened by password steps, so that the code can be sent to any node. A
-- user may have a few pending (one per password step, each answered with its own token); the
-- token is kept only as its SHA-256.
CREATE TABLE mfa_challenges (
    user_id     BIGINT UNSIGNED NOT NULL,
    token_hash  BINARY(32)      NOT NULL,
    created_at  DATETIME(6)     NOT NULL,
    expires_at  DATETIME(6)     NOT NULL,
    failures    INT UNSIGNED    NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, token_hash),
    CONSTRAINT mfa_challenges_user_fk FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Cluster membership: one row per clustered node, with the lease that lets it answer from
-- memory. Lease times use the database's clock (UTC_TIMESTAMP), the one clock every node
-- shares; a node renews its lease only while its bus subscription is healthy. A node that did
-- not confirm a change is fenced: its lease can no longer be renewed, so it stops answering
-- from memory when the lease it holds runs out. seen_at moves on every few seconds whatever
-- the bus does, so a single-node instance can tell that clustered nodes are still running.
CREATE TABLE cluster_nodes (
    node_id      CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
    host         VARCHAR(255)    NULL,
    started_at   DATETIME(6)     NOT NULL,
    lease_until  DATETIME(6)     NOT NULL,
    fenced       BOOLEAN         NOT NULL DEFAULT FALSE,
    seen_at      DATETIME(6)     NOT NULL,
    KEY cluster_nodes_lease (lease_until),
    KEY cluster_nodes_seen (seen_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
