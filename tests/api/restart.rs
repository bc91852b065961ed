use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_restart_keeps_every_live_session_and_every_revocation() {
    let mut app = spawn_app().await;
    let john = app.user().await;
    let jane = app.user().await;
    let kept = app.logged_in(&john).await;
    let logged_out = app.logged_in(&john).await;
    assert_eq!(
        app.logout(&logged_out.token, None).await.status(),
        StatusCode::OK
    );
    let janes_current = app.logged_in(&jane).await;
    let janes_others = [app.logged_in(&jane).await, app.logged_in(&jane).await];
    let response = app
        .logout_all(&janes_current.token, &json!({"keepCurrent": true}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    app.restart().await;

    assert_eq!(app.me(&kept.token).await.status(), StatusCode::OK);
    assert_eq!(app.me(&janes_current.token).await.status(), StatusCode::OK);
    assert_eq!(
        app.me(&logged_out.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    for other in &janes_others {
        assert_eq!(
            app.me(&other.token).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}
