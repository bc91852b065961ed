//! The console's three cookies. Each is `HttpOnly` (no script reads it) and `SameSite=Strict`
//! (no other site's page sends it). With `console.secure_cookies` on (production) each is
//! `__Host-` prefixed: `Secure`, `Path=/` and no `Domain`, so only this host, over HTTPS, can
//! set it; no sibling subdomain can plant one of ours, and no plain-HTTP response can
//! overwrite one. Without it (plain `http://localhost` in development) each is scoped by
//! `Path` to the console calls that use it. None but the operator's outlives the browser: the
//! others carry no `Max-Age`, and what they hold expires on its own (the access token with its
//! session, the challenge in minutes).
//!
//! Reading is strict: a cookie whose name comes twice in a request is no credential at all
//! (which of two was planted cannot be told), and pairs are read as bytes, so another cookie
//! with a non-ASCII value cannot hide ours.

use warp::http::HeaderValue;
use warp::http::header::{COOKIE, HeaderMap};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cookie {
    /// The customer's access token.
    Session,
    /// The pending MFA challenge's `mfaToken`, between the password step and the code.
    Challenge,
    /// An operator's pass, given for the admin key (`operator`).
    Operator,
}

impl Cookie {
    fn base_name(self) -> &'static str {
        match self {
            Self::Session => "finsec_session",
            Self::Challenge => "finsec_mfa",
            Self::Operator => "finsec_operator",
        }
    }

    /// Only the console calls that use it receive it.
    fn path(self) -> &'static str {
        match self {
            Self::Session => "/console/api/auth",
            Self::Challenge => "/console/api/auth/verify-mfa",
            Self::Operator => "/console/api/admin",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Cookies {
    secure: bool,
}

impl Cookies {
    pub fn new(secure: bool) -> Self {
        Self { secure }
    }

    /// `__Host-` makes the browser refuse the cookie unless this host sent it over HTTPS with
    /// `Secure`, `Path=/` and no `Domain`.
    fn name(&self, cookie: Cookie) -> String {
        if self.secure {
            format!("__Host-{}", cookie.base_name())
        } else {
            cookie.base_name().to_owned()
        }
    }

    /// `Set-Cookie` for `value`; `max_age` in seconds, none for a browser-session cookie.
    pub fn set(
        &self,
        cookie: Cookie,
        value: &str,
        max_age: Option<u64>,
    ) -> Result<HeaderValue, ApiError> {
        let path = if self.secure { "/" } else { cookie.path() };
        let mut header = format!(
            "{}={value}; Path={path}; HttpOnly; SameSite=Strict",
            self.name(cookie)
        );
        if let Some(seconds) = max_age {
            header.push_str(&format!("; Max-Age={seconds}"));
        }
        if self.secure {
            header.push_str("; Secure");
        }
        HeaderValue::from_str(&header)
            .map_err(|_| ApiError::Internal(format!("unsendable {cookie:?} cookie")))
    }

    /// `Set-Cookie` that deletes it.
    pub fn clear(&self, cookie: Cookie) -> HeaderValue {
        self.set(cookie, "", Some(0))
            .unwrap_or_else(|_| HeaderValue::from_static("finsec_cleared=; Max-Age=0"))
    }

    /// The cookie's value in the request: there once, not empty, and ASCII.
    pub fn read<'a>(&self, headers: &'a HeaderMap, cookie: Cookie) -> Option<&'a str> {
        let name = self.name(cookie);
        let mut values = headers
            .get_all(COOKIE)
            .iter()
            .flat_map(|header| header.as_bytes().split(|&b| b == b';'))
            .filter_map(|pair| {
                let at = pair.iter().position(|&b| b == b'=')?;
                let (key, value) = (pair[..at].trim_ascii(), pair[at + 1..].trim_ascii());
                (key == name.as_bytes()).then_some(value)
            });
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        std::str::from_utf8(value)
            .ok()
            .filter(|value| !value.is_empty() && value.is_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_http_only_strict_and_scoped() {
        let plain = Cookies::new(false)
            .set(Cookie::Session, "t0k", None)
            .unwrap();
        assert_eq!(
            plain,
            "finsec_session=t0k; Path=/console/api/auth; HttpOnly; SameSite=Strict"
        );
        let secure = Cookies::new(true)
            .set(Cookie::Operator, "p", Some(900))
            .unwrap();
        assert_eq!(
            secure,
            "__Host-finsec_operator=p; Path=/; HttpOnly; SameSite=Strict; Max-Age=900; Secure"
        );
        let cleared = Cookies::new(false).clear(Cookie::Challenge);
        assert!(cleared.to_str().unwrap().starts_with("finsec_mfa=; "));
        assert!(cleared.to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn a_cookie_is_read_by_its_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("x_finsec_session=no; finsec_session=yes; finsec_mfa="),
        );
        let cookies = Cookies::new(false);
        assert_eq!(cookies.read(&headers, Cookie::Session), Some("yes"));
        assert_eq!(cookies.read(&headers, Cookie::Challenge), None);
        assert_eq!(cookies.read(&headers, Cookie::Operator), None);
        // With Secure on, only the prefixed name counts: a plain-HTTP cookie is not it.
        assert_eq!(Cookies::new(true).read(&headers, Cookie::Session), None);
    }

    #[test]
    fn a_planted_twin_or_a_foreign_byte_cannot_pass_for_ours() {
        let cookies = Cookies::new(false);
        let mut twins = HeaderMap::new();
        twins.insert(
            COOKIE,
            HeaderValue::from_static("finsec_session=planted; finsec_session=real"),
        );
        assert_eq!(cookies.read(&twins, Cookie::Session), None, "two: neither");
        let mut split = HeaderMap::new();
        split.append(COOKIE, HeaderValue::from_static("finsec_session=a"));
        split.append(COOKIE, HeaderValue::from_static("finsec_session=b"));
        assert_eq!(
            cookies.read(&split, Cookie::Session),
            None,
            "across headers too"
        );
        let mut foreign = HeaderMap::new();
        foreign.insert(
            COOKIE,
            HeaderValue::from_bytes(b"other=caf\xc3\xa9; finsec_session=ours").unwrap(),
        );
        assert_eq!(cookies.read(&foreign, Cookie::Session), Some("ours"));
    }
}
