//! Arbitrary bytes as a request body (through every typed accessor the handlers use) and as a
//! bearer token: nothing may panic.
#![no_main]

use finsec::auth::TokenIssuer;
use finsec::config::JwtSettings;
use finsec::http::extract::parse_object;
use libfuzzer_sys::fuzz_target;

const FIELDS: [&str; 12] = [
    "email",
    "password",
    "userId",
    "otpCode",
    "mfaToken",
    "sessionId",
    "keepCurrent",
    "currentPassword",
    "newPassword",
    "reason",
    "recoveryCode",
    "keepOtherSessions",
];

fuzz_target!(|data: &[u8]| {
    for optional in [false, true] {
        if let Ok(object) = parse_object(data, optional) {
            for field in FIELDS {
                let _ = object.string(field);
                let _ = object.optional_string(field);
                let _ = object.email(field);
                let _ = object.optional_email(field);
                let _ = object.user_id(field);
                let _ = object.optional_user_id(field);
                let _ = object.optional_bool(field);
                let _ = object.optional_session_id(field);
            }
            let _ = object.second_factor();
        }
    }
    if let Ok(token) = std::str::from_utf8(data) {
        let issuer = TokenIssuer::new(&JwtSettings {
            secret: "fuzz-secret-0123456789abcdef0123456789".to_owned().into(),
            issuer: "finsec-sessions".into(),
            audience: "finsec-banking-api".into(),
        });
        let _ = issuer.verify(token);
    }
});
