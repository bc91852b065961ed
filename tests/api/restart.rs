use reqwest::StatusCode;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_restart_keeps_live_sessions_and_every_logout() {
    let mut app = spawn_app().await;
    let john = app.user().await;
    let kept = app.logged_in(&john).await;
    let ended = app.logged_in(&john).await;
    assert_eq!(
        app.logout(&ended.token, None).await.status(),
        StatusCode::OK
    );

    app.restart().await;

    assert_eq!(app.me(&kept.token).await.status(), StatusCode::OK);
    assert_eq!(
        app.me(&ended.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
}
