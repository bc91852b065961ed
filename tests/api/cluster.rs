//! Three instances on one database and one NATS server: a change acknowledged on one node is
//! in force on every node before the client sees the 200, whatever node it asks next.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_KEY, LoggedIn, Partition, TestApp, TestCluster, spawn_app, spawn_cluster,
    spawn_cluster_with, spawn_node,
};

/// Asserts that every node answers `status` for `session` right now (no waiting).
async fn everywhere(cluster: &TestCluster, session: &LoggedIn, status: StatusCode) {
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert_eq!(
            node.me(&session.token).await.status(),
            status,
            "node {i} for session {}",
            session.session_id
        );
    }
}

#[tokio::test]
async fn a_session_opened_on_one_node_works_on_the_others() {
    let cluster = spawn_cluster(3).await;
    let john = cluster.node(0).user().await;
    let session = cluster.node(0).logged_in(&john).await;
    everywhere(&cluster, &session, StatusCode::OK).await;

    // Also when the other node's actor for John was already resident before the login (its
    // memory cannot know the new session; it must look before it refuses).
    let second = cluster.node(1).logged_in(&john).await;
    everywhere(&cluster, &second, StatusCode::OK).await;
}

#[tokio::test]
async fn a_logout_on_one_node_is_refused_on_every_other_node_at_once() {
    let cluster = spawn_cluster(3).await;
    let john = cluster.node(0).user().await;
    for round in 0..100 {
        let session = cluster.node(round % 3).logged_in(&john).await;
        // Every node holds the session in memory, so a stale cache would accept it; the
        // second round of validations is answered from each node's publication (the read
        // path beside the actors), which must not outlive the logout either.
        everywhere(&cluster, &session, StatusCode::OK).await;
        everywhere(&cluster, &session, StatusCode::OK).await;
        for node in &cluster.nodes {
            assert_eq!(node.state.sessions.registry().published_count(), 1);
        }
        let logout = cluster.node(1).logout(&session.token, None).await;
        assert_eq!(logout.status(), StatusCode::OK, "round {round}");
        for i in [0, 2] {
            assert_eq!(
                cluster.node(i).me(&session.token).await.status(),
                StatusCode::UNAUTHORIZED,
                "round {round}: node {i} accepted a session logged out on node 1"
            );
        }
    }
}

#[tokio::test]
async fn a_logout_on_one_node_is_refused_where_the_user_is_hibernated() {
    let cluster = spawn_cluster_with(3, crate::read_path::quick_hibernation).await;
    let john = cluster.node(0).user().await;
    let sessions = [
        cluster.node(0).logged_in(&john).await,
        cluster.node(2).logged_in(&john).await,
    ];
    for session in &sessions {
        everywhere(&cluster, session, StatusCode::OK).await;
        everywhere(&cluster, session, StatusCode::OK).await;
    }
    // No actor for John on any node: each node's publication answers for him alone.
    for node in &cluster.nodes {
        crate::read_path::hibernated(node, 1).await;
    }
    everywhere(&cluster, &sessions[1], StatusCode::OK).await;
    let logout = cluster.node(1).logout(&sessions[0].token, None).await;
    assert_eq!(logout.status(), StatusCode::OK);
    everywhere(&cluster, &sessions[0], StatusCode::UNAUTHORIZED).await;
    everywhere(&cluster, &sessions[1], StatusCode::OK).await;
}

#[tokio::test]
async fn a_logout_answered_503_is_refused_on_the_other_nodes_too() {
    // The ending node's writer waits an hour between rounds: whatever keeps the session dead
    // on the other nodes once the table is back, it is not the row.
    let cluster = spawn_cluster_with(3, |f| f.merge(("actors.revoke_retry", "1h"))).await;
    let john = cluster.node(0).user().await;
    let session = cluster.node(0).logged_in(&john).await;
    let other = cluster.node(0).logged_in(&john).await;
    // Every node holds both sessions in memory.
    everywhere(&cluster, &session, StatusCode::OK).await;
    everywhere(&cluster, &other, StatusCode::OK).await;
    // Session writes fail; the bus, the leases and the users table still work.
    cluster
        .db
        .execute("RENAME TABLE sessions TO sessions_offline")
        .await;
    let logout = cluster.node(1).logout(&session.token, None).await;
    assert_eq!(logout.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Not acknowledged, yet accepted nowhere: nodes 0 and 2 heard of it on the bus (they
    // refuse it, or, unable to reload John's sessions from the broken table, answer 503).
    for i in 0..3 {
        let refused = crate::helpers::eventually(|| async {
            let status = cluster.node(i).me(&session.token).await.status();
            (status == StatusCode::UNAUTHORIZED || status == StatusCode::SERVICE_UNAVAILABLE)
                .then_some(())
        })
        .await;
        assert!(
            refused.is_some(),
            "node {i} still accepts a session ended on node 1"
        );
    }
    assert_eq!(
        cluster.node(1).me(&other.token).await.status(),
        StatusCode::OK
    );
    // Nodes 0 and 2 lose their memory of John (his actors crash; the next request reloads
    // him), and the table is back with the row still live (nobody has written it yet): every
    // node reloads John's sessions from it, and each must still refuse the ended one.
    for i in [0, 2] {
        let node = cluster.node(i);
        let actor = node
            .state
            .sessions
            .registry()
            .resident(john.id)
            .expect("resident");
        actor.cast(finsec::sessions::UserMsg::Crash).unwrap();
        let forgotten = crate::helpers::eventually(|| async {
            node.state
                .sessions
                .registry()
                .resident(john.id)
                .is_none()
                .then_some(())
        })
        .await;
        assert!(forgotten.is_some());
    }
    cluster
        .db
        .execute("RENAME TABLE sessions_offline TO sessions")
        .await;
    for i in 0..3 {
        assert_eq!(
            cluster.node(i).me(&session.token).await.status(),
            StatusCode::UNAUTHORIZED,
            "node {i} revived a session from the stale row"
        );
        assert_eq!(
            cluster.node(i).me(&other.token).await.status(),
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn logout_all_ends_sessions_opened_on_every_node() {
    let cluster = spawn_cluster(3).await;
    let john = cluster.node(0).user().await;
    let mut sessions = Vec::new();
    for i in 0..3 {
        let session = cluster.node(i).logged_in(&john).await;
        everywhere(&cluster, &session, StatusCode::OK).await;
        sessions.push(session);
    }
    let response = cluster
        .node(2)
        .logout_all(&sessions[0].token, &json!({"keepCurrent": true}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked"], 2, "{body}");
    everywhere(&cluster, &sessions[0], StatusCode::OK).await;
    for ended in &sessions[1..] {
        everywhere(&cluster, ended, StatusCode::UNAUTHORIZED).await;
    }
}

#[tokio::test]
async fn admin_forced_logout_and_password_change_hold_on_every_node() {
    let cluster = spawn_cluster_with(3, |f| f.merge(("admin.api_key", ADMIN_KEY))).await;
    let john = cluster.node(0).user().await;
    let phone = cluster.node(0).logged_in(&john).await;
    let laptop = cluster.node(1).logged_in(&john).await;
    everywhere(&cluster, &phone, StatusCode::OK).await;
    everywhere(&cluster, &laptop, StatusCode::OK).await;

    let forced = cluster
        .node(2)
        .admin(
            Method::POST,
            &format!("/api/admin/users/{}/logout-all", john.id),
            Some(ADMIN_KEY),
        )
        .json(&json!({"reason": "card reported stolen"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status(), StatusCode::OK);
    everywhere(&cluster, &phone, StatusCode::UNAUTHORIZED).await;
    everywhere(&cluster, &laptop, StatusCode::UNAUTHORIZED).await;

    let here = cluster.node(0).logged_in(&john).await;
    let there = cluster.node(1).logged_in(&john).await;
    everywhere(&cluster, &there, StatusCode::OK).await;
    let changed = cluster
        .node(2)
        .change_password(
            &here.token,
            &json!({"currentPassword": john.password, "newPassword": "a-much-better-passphrase"}),
        )
        .await;
    assert_eq!(changed.status(), StatusCode::OK);
    everywhere(&cluster, &there, StatusCode::UNAUTHORIZED).await;
    everywhere(&cluster, &here, StatusCode::OK).await;
}

#[tokio::test]
async fn the_password_step_on_one_node_and_the_code_on_another() {
    let cluster = spawn_cluster(3).await;
    let jane = cluster.node(0).mfa_user().await;
    let mfa_token = cluster.node(0).begin_mfa(&jane).await;
    let response = cluster
        .node(1)
        .verify_mfa(
            &json!({"userId": jane.id.get(), "otpCode": jane.totp_code(0), "mfaToken": mfa_token}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let session = LoggedIn::from_body(&response.json().await.unwrap());
    everywhere(&cluster, &session, StatusCode::OK).await;

    // Wrong codes count across nodes: four on node 1 and one on node 2 void the challenge.
    let mfa_token = cluster.node(0).begin_mfa(&jane).await;
    for i in 0..5 {
        let wrong = cluster
            .node(1 + i / 4)
            .verify_mfa(
                &json!({"userId": jane.id.get(), "otpCode": "000000", "mfaToken": mfa_token}),
            )
            .await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    }
    let right = cluster
        .node(0)
        .verify_mfa(
            &json!({"userId": jane.id.get(), "otpCode": jane.totp_code(1), "mfaToken": mfa_token}),
        )
        .await;
    assert_eq!(
        right.status(),
        StatusCode::UNAUTHORIZED,
        "the challenge was voided by failures counted on other nodes"
    );
}

#[tokio::test]
async fn one_totp_code_raced_on_two_nodes_is_accepted_once() {
    let cluster = spawn_cluster(2).await;
    let jane = cluster.node(0).mfa_user().await;
    let code = jane.totp_code(0);
    let body = json!({"userId": jane.id.get(), "otpCode": code,
        "email": jane.email, "password": jane.password});
    let (a, b) = tokio::join!(
        cluster.node(0).verify_mfa(&body),
        cluster.node(1).verify_mfa(&body),
    );
    let statuses = [a.status(), b.status()];
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn concurrent_logins_on_two_nodes_never_exceed_the_session_limit() {
    let cluster = spawn_cluster_with(2, |f| f.merge(("session.max_per_user", 3))).await;
    let john = cluster.node(0).user().await;
    let credentials = john.credentials();
    let logins = (0..12).map(|i| cluster.node(i % 2).login(&credentials));
    let responses = futures_util::future::join_all(logins).await;
    let mut sessions = Vec::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::OK);
        sessions.push(LoggedIn::from_body(&response.json().await.unwrap()));
    }
    let live = cluster
        .db
        .query_one(&format!(
            "SELECT COUNT(*) FROM sessions WHERE user_id = {} AND revoked_at IS NULL",
            john.id
        ))
        .await;
    assert_eq!(live.as_deref(), Some("3"));
    let mut accepted = 0;
    for session in &sessions {
        let on_0 = cluster.node(0).me(&session.token).await.status();
        let on_1 = cluster.node(1).me(&session.token).await.status();
        assert_eq!(on_0, on_1, "both nodes agree on {}", session.session_id);
        accepted += usize::from(on_0 == StatusCode::OK);
    }
    assert_eq!(accepted, 3);
}

#[tokio::test]
async fn with_the_bus_down_nodes_ask_mysql_and_revocations_still_hold() {
    let mut cluster = spawn_cluster_with(3, |f| f.merge(("cluster.lease", "1s"))).await;
    let john = cluster.node(0).user().await;
    let kept = cluster.node(0).logged_in(&john).await;
    let ended = cluster.node(1).logged_in(&john).await;
    everywhere(&cluster, &ended, StatusCode::OK).await;

    cluster.nats.stop();
    for node in &cluster.nodes {
        wait_for(
            || !node.trusted(),
            Duration::from_secs(2),
            "a node without its bus stops trusting memory",
        )
        .await;
    }
    // Sessions keep working (read from MySQL), and a logout is acknowledged only once no
    // node can be answering from memory.
    everywhere(&cluster, &kept, StatusCode::OK).await;
    let logout = cluster.node(2).logout(&ended.token, None).await;
    assert_eq!(logout.status(), StatusCode::OK);
    everywhere(&cluster, &ended, StatusCode::UNAUTHORIZED).await;
    let during = cluster.node(0).logged_in(&john).await;
    everywhere(&cluster, &during, StatusCode::OK).await;

    cluster.nats.resume();
    for node in &cluster.nodes {
        node.wait_until_trusted().await;
    }
    everywhere(&cluster, &ended, StatusCode::UNAUTHORIZED).await;
    everywhere(&cluster, &kept, StatusCode::OK).await;
    // And the bus carries revocations again.
    assert_eq!(
        cluster.node(0).logout(&during.token, None).await.status(),
        StatusCode::OK
    );
    everywhere(&cluster, &during, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn a_partitioned_node_stops_trusting_memory_within_a_lease() {
    let cluster = spawn_cluster_with(2, |f| f.merge(("cluster.lease", "1s"))).await;
    let relay = Partition::relay_to(cluster.nats.port).await;
    let lease = |f: figment::Figment| f.merge(("cluster.lease", "1s"));
    let island = spawn_node(&cluster.db, &relay.url(), lease).await;
    let john = cluster.node(0).user().await;
    let session = cluster.node(0).logged_in(&john).await;
    assert_eq!(island.me(&session.token).await.status(), StatusCode::OK);

    relay.cut();
    let cut_at = Instant::now();
    // At once, a logout on another node. The island never hears it and never confirms: it
    // is fenced, and the 200 waits until the lease it still holds has run out (about a
    // lease at most). Meanwhile the island itself stops trusting its memory.
    let (logout, ()) = tokio::join!(cluster.node(1).logout(&session.token, None), async {
        wait_for(
            || !island.trusted(),
            Duration::from_millis(1500),
            "the island stops trusting memory",
        )
        .await;
        // Within the lease (1 s), give or take the polling and a loaded machine's scheduling.
        assert!(
            cut_at.elapsed() <= Duration::from_millis(1300),
            "{:?}",
            cut_at.elapsed()
        );
    });
    assert_eq!(logout.status(), StatusCode::OK);
    assert!(
        cut_at.elapsed() < Duration::from_millis(2500),
        "{:?}",
        cut_at.elapsed()
    );
    // The island, which never heard of the logout, refuses the session: it asks MySQL.
    assert_eq!(
        island.me(&session.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Fenced: its lease cannot be renewed even if a path to some NATS server still echoes its
    // heartbeats.
    let island_id = island
        .state
        .sessions
        .cluster()
        .node_id()
        .unwrap()
        .to_owned();
    let fenced = cluster
        .db
        .query_one(&format!(
            "SELECT fenced FROM cluster_nodes WHERE node_id = '{island_id}'"
        ))
        .await;
    assert_eq!(fenced.as_deref(), Some("1"));
}

#[tokio::test]
async fn a_second_instance_without_a_bus_refuses_to_start() {
    let app = spawn_app().await;
    let output = finsec(&app.db.url).output().await.expect("finsec runs");
    assert!(!output.status.success());
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.contains("another instance holds this database") && line.contains("cluster.bus_url"),
        "{stderr}"
    );
}

#[tokio::test]
async fn single_node_and_clustered_modes_never_mix() {
    // A clustered node refuses while a single-node instance holds the database...
    let single = spawn_app().await;
    let nats = crate::helpers::NatsServer::start();
    let err = clustered_start(&single, &nats.url()).await;
    assert!(err.contains("single-node instance"), "{err}");
    drop(single);

    // ...and a single-node instance refuses while clustered nodes are live.
    let cluster = spawn_cluster(1).await;
    let output = finsec(&cluster.db.url).output().await.expect("finsec runs");
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("clustered instances are live"), "{stderr}");
}

async fn clustered_start(app: &TestApp, bus_url: &str) -> String {
    let output = finsec(&app.db.url)
        .env("FINSEC__CLUSTER__BUS_URL", bus_url)
        .output()
        .await
        .expect("finsec runs");
    assert_eq!(output.status.code(), Some(3));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn the_clis_revoke_all_is_in_force_on_every_node_when_it_returns() {
    let cluster = spawn_cluster(3).await;
    let john = cluster.node(0).user().await;
    let sessions = [
        cluster.node(0).logged_in(&john).await,
        cluster.node(1).logged_in(&john).await,
        cluster.node(2).logged_in(&john).await,
    ];
    for session in &sessions {
        everywhere(&cluster, session, StatusCode::OK).await;
    }
    let output = finsec(&cluster.db.url)
        .args([
            "sessions",
            "revoke-all",
            "--user",
            &john.email,
            "--reason",
            "from the CLI",
        ])
        .env("FINSEC__CLUSTER__BUS_URL", cluster.nats.url())
        .output()
        .await
        .expect("finsec runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("revoked 3 session(s)") && stdout.contains("confirmed by every live node"),
        "{stdout}"
    );
    for session in &sessions {
        everywhere(&cluster, session, StatusCode::UNAUTHORIZED).await;
    }
    cluster.node(0).assert_ended(&sessions[0], "admin").await;
}

#[tokio::test]
async fn deactivation_ends_sessions_everywhere_and_reactivation_lets_the_user_back() {
    let cluster = spawn_cluster_with(3, |f| f.merge(("admin.api_key", ADMIN_KEY))).await;
    let john = cluster.node(0).user().await;
    let phone = cluster.node(0).logged_in(&john).await;
    let laptop = cluster.node(1).logged_in(&john).await;
    everywhere(&cluster, &phone, StatusCode::OK).await;
    everywhere(&cluster, &laptop, StatusCode::OK).await;

    let admin = |node: &TestApp, action: &str| {
        node.admin(
            Method::POST,
            &format!("/api/admin/users/{}/{action}", john.id),
            Some(ADMIN_KEY),
        )
        .json(&json!({"reason": "fraud investigation"}))
        .send()
    };
    let response = admin(cluster.node(2), "deactivate").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked"], 2, "{body}");
    everywhere(&cluster, &phone, StatusCode::UNAUTHORIZED).await;
    everywhere(&cluster, &laptop, StatusCode::UNAUTHORIZED).await;
    cluster
        .node(0)
        .assert_ended(&phone, "account_disabled")
        .await;
    for node in &cluster.nodes {
        assert_eq!(
            node.login(&john.credentials()).await.status(),
            StatusCode::FORBIDDEN
        );
    }

    let response = admin(cluster.node(1), "activate").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let back = cluster.node(0).logged_in(&john).await;
    everywhere(&cluster, &back, StatusCode::OK).await;
}

#[tokio::test]
async fn a_change_made_in_sql_is_seen_within_the_refresh_interval() {
    let cluster = spawn_cluster_with(2, |f| f.merge(("cluster.user_refresh", "1s"))).await;
    let john = cluster.node(0).user().await;
    let session = cluster.node(0).logged_in(&john).await;
    everywhere(&cluster, &session, StatusCode::OK).await;

    cluster
        .db
        .execute(&format!(
            "UPDATE users SET is_active = FALSE WHERE id = {}",
            john.id
        ))
        .await;
    let changed = Instant::now();
    for node in &cluster.nodes {
        loop {
            if node.me(&session.token).await.status() == StatusCode::UNAUTHORIZED {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_millis(1500),
                "still accepted {:?} after the change",
                changed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_password_change_that_ends_nothing_here_still_refreshes_every_node() {
    // Another session ended a moment ago, committed but not (yet) announced: here, ended in
    // SQL, as another node's logout is while it collects its confirmations. A password change
    // then finds no other live session to end, yet promises that every other session is over
    // everywhere: node 1, still holding the ended session in memory, must refuse it when the
    // 200 comes. (It used to confirm only what it ended itself, so nothing, and node 1 kept
    // granting the session until `cluster.user_refresh`.)
    let cluster = spawn_cluster(2).await;
    let john = cluster.node(0).user().await;
    let here = cluster.node(0).logged_in(&john).await;
    let elsewhere = cluster.node(0).logged_in(&john).await;
    everywhere(&cluster, &elsewhere, StatusCode::OK).await;
    cluster
        .db
        .execute(&format!(
            "UPDATE sessions SET revoked_at = UTC_TIMESTAMP(6), revoke_reason = 'logout' \
             WHERE id = '{}'",
            elsewhere.session_id
        ))
        .await;
    assert_eq!(
        cluster.node(1).me(&elsewhere.token).await.status(),
        StatusCode::OK,
        "node 1 answers from memory: the precondition"
    );

    let response = cluster
        .node(0)
        .change_password(
            &here.token,
            &json!({"currentPassword": john.password, "newPassword": "a much longer new passphrase"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked"], json!(0), "nothing was left to end here");
    everywhere(&cluster, &elsewhere, StatusCode::UNAUTHORIZED).await;
    everywhere(&cluster, &here, StatusCode::OK).await;
}

#[tokio::test]
async fn idle_expiry_on_one_node_does_not_end_a_session_busy_on_another() {
    let cluster = spawn_cluster_with(2, |f| {
        f.merge(("session.idle_timeout", "2s"))
            .merge(("session.touch_interval", "200ms"))
    })
    .await;
    let john = cluster.node(0).user().await;
    let session = cluster.node(0).logged_in(&john).await;
    // Node 1 sees the session once, then only node 0 is used, for longer than the idle timeout.
    assert_eq!(
        cluster.node(1).me(&session.token).await.status(),
        StatusCode::OK
    );
    let until = Instant::now() + Duration::from_millis(2600);
    while Instant::now() < until {
        assert_eq!(
            cluster.node(0).me(&session.token).await.status(),
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Node 1's memory says idle; MySQL has node 0's activity.
    assert_eq!(
        cluster.node(1).me(&session.token).await.status(),
        StatusCode::OK
    );
    everywhere(&cluster, &session, StatusCode::OK).await;
}

/// The `finsec` binary on `db_url`, listening on a free port if it serves.
fn finsec(db_url: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_finsec"));
    command
        .arg("--config-dir")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .env("FINSEC__DATABASE__URL", db_url)
        .env("FINSEC__JWT__SECRET", crate::helpers::JWT_SECRET)
        .env(
            "FINSEC__SECURITY__ENCRYPTION_KEY",
            crate::helpers::ENCRYPTION_KEY,
        )
        .env("FINSEC__HTTP__PORT", "0");
    command
}

async fn wait_for(condition: impl Fn() -> bool, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_single_node_that_loses_its_database_to_another_instance_stops() {
    let mut app = spawn_app().await;
    let lock = "CONCAT('finsec.single-node.', DATABASE())";
    let holder = app
        .db
        .query_one(&format!("SELECT IS_USED_LOCK({lock})"))
        .await
        .expect("the running instance holds the lock");
    // The lock's connection dies (a database restart, a network cut) and another instance
    // takes the lock before this one can take it back.
    let mut thief = app.db.connection().await;
    app.db.execute(&format!("KILL {holder}")).await;
    let taken: Option<i64> = mysql_async::prelude::Queryable::query_first(
        &mut thief,
        format!("SELECT GET_LOCK({lock}, 5)"),
    )
    .await
    .unwrap();
    assert_eq!(taken, Some(1));
    assert!(
        app.stopped_within(Duration::from_secs(10)).await,
        "the instance kept serving without its lock"
    );
    drop(thief);
}

#[tokio::test]
async fn a_factor_change_on_one_node_ends_the_other_sessions_on_every_node_at_once() {
    let cluster = spawn_cluster(3).await;
    let john = cluster.node(0).user().await;
    let mut sessions = Vec::new();
    for i in 0..3 {
        let session = cluster.node(i).logged_in(&john).await;
        everywhere(&cluster, &session, StatusCode::OK).await;
        sessions.push(session);
    }
    // Enabled through node 1, for the session opened on node 0.
    let (secret, codes) =
        crate::mfa_lifecycle::enrol(cluster.node(1), &john, &sessions[0], false).await;
    everywhere(&cluster, &sessions[0], StatusCode::OK).await;
    for ended in &sessions[1..] {
        everywhere(&cluster, ended, StatusCode::UNAUTHORIZED).await;
    }
    // Every node now asks for the second factor, and a code spent on one is spent on all.
    for i in 0..3 {
        let response = cluster.node(i).login(&john.credentials()).await;
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["requireMfa"], true, "node {i}: {body}");
    }
    let code = crate::mfa_lifecycle::code_of(&secret, 1);
    let step: Value = cluster
        .node(2)
        .login(&john.credentials())
        .await
        .json()
        .await
        .unwrap();
    let opened = cluster
        .node(2)
        .verify_mfa(
            &json!({"userId": john.id.get(), "mfaToken": step["mfaToken"], "otpCode": code}),
        )
        .await;
    assert_eq!(opened.status(), StatusCode::OK);
    let phone = LoggedIn::from_body(&opened.json().await.unwrap());

    // Disabled through node 2 with a recovery code: the phone's session ends everywhere.
    let disabled = cluster
        .node(2)
        .post_with_token(
            "/api/auth/mfa/disable",
            &sessions[0].token,
            &json!({"password": john.password, "recoveryCode": codes[0]}),
        )
        .await;
    assert_eq!(disabled.status(), StatusCode::OK);
    everywhere(&cluster, &phone, StatusCode::UNAUTHORIZED).await;
    everywhere(&cluster, &sessions[0], StatusCode::OK).await;
    for i in 0..3 {
        let body: Value = cluster
            .node(i)
            .login(&john.credentials())
            .await
            .json()
            .await
            .unwrap();
        assert!(body["access_token"].is_string(), "node {i}: {body}");
    }
}

#[tokio::test]
async fn a_logout_is_refused_on_nodes_whose_actors_are_busy_when_it_arrives() {
    // The other nodes answer John's validations from their publications (no message). Their
    // actors are busy when the logout's news arrives, so its `Forget` waits in their
    // mailboxes: the news itself, recorded before the node confirms, must stop the
    // publication from answering.
    use finsec::sessions::UserMsg;
    let cluster = spawn_cluster(3).await;
    let john = cluster.node(0).user().await;
    let session = cluster.node(0).logged_in(&john).await;
    everywhere(&cluster, &session, StatusCode::OK).await;
    everywhere(&cluster, &session, StatusCode::OK).await;
    for i in [0, 2] {
        cluster
            .node(i)
            .actor_of(&john)
            .cast(UserMsg::Stall(Duration::from_millis(800)))
            .unwrap();
    }
    let logout = cluster.node(1).logout(&session.token, None).await;
    assert_eq!(logout.status(), StatusCode::OK);
    for i in [0, 2] {
        assert_eq!(
            cluster.node(i).me(&session.token).await.status(),
            StatusCode::UNAUTHORIZED,
            "node {i} accepted a session logged out on node 1"
        );
    }
}
