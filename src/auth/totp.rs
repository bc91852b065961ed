//! TOTP codes (RFC 6238: SHA1, 6 digits, 30 s steps, `auth.totp_skew_steps` of skew either
//! side) with a replay guard: a code is identified by its time step, and only a step newer
//! than the last one accepted for the user is accepted, so each code works once, ever.
//!
//! Every candidate step is compared, each in constant time, without stopping at the first
//! match, so the time taken says nothing about which step (if any) matched.
//!
//! Enrolment: [`new_secret`] draws 160 random bits (RFC 4226's recommended length), and
//! [`Enrolment`] gives the `otpauth://` URI and its QR code as SVG.

use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};
use totp_rs::{Algorithm, Secret, Totp};

const DIGITS: u8 = 6;
const STEP_SECONDS: u64 = 30;
/// The default skew: one step either side (a code lives 30 s, and is accepted 30 s early or
/// late, for clocks and typing).
pub const DEFAULT_SKEW_STEPS: u8 = 1;
/// Shown in authenticator apps as the account's issuer.
pub const ISSUER: &str = "FinSec";
const SECRET_BYTES: usize = 20;

/// The per-user TOTP generator; build it from the (opened) base32 secret.
pub struct TotpCode {
    totp: Totp,
    skew: u64,
}

impl TotpCode {
    /// With the default skew; `None` when the secret is not valid base32 or too short.
    pub fn from_base32(secret: &str) -> Option<Self> {
        Self::with_skew(secret, DEFAULT_SKEW_STEPS)
    }

    /// `skew` steps either side of the current one are accepted (0: only the current step).
    pub fn with_skew(secret: &str, skew: u8) -> Option<Self> {
        let bytes = Secret::try_from_base32(secret).ok()?;
        totp_rs::Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(DIGITS)
            .with_step_duration(STEP_SECONDS)
            .with_skew(u16::from(skew))
            .with_secret(bytes)
            .build()
            .ok()
            .map(|totp| Self {
                totp,
                skew: u64::from(skew),
            })
    }

    /// The time step `code` belongs to at `unix_time`, if it is valid for any step in the
    /// window and that step is newer than `last_step`.
    pub fn verify(&self, code: &str, unix_time: u64, last_step: Option<u64>) -> Option<u64> {
        if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now_step = unix_time / STEP_SECONDS;
        let mut matched = None;
        for step in now_step.saturating_sub(self.skew)..=now_step + self.skew {
            let expected = self.totp.generate(step * STEP_SECONDS).to_string();
            // `subtle` compares every byte whatever the first difference; no early return.
            let equal: bool =
                subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), code.as_bytes()).into();
            if equal {
                matched = Some(step);
            }
        }
        matched.filter(|step| last_step.is_none_or(|last| *step > last))
    }

    /// The code for `unix_time`; used by the CLI's demo output and by tests.
    pub fn generate(&self, unix_time: u64) -> String {
        self.totp.generate(unix_time).to_string()
    }

    /// The step `code` belongs to whatever the replay guard says: tells a reused code (its
    /// step already spent) from a wrong one, for the audit trail.
    pub fn step_of(&self, code: &str, unix_time: u64) -> Option<u64> {
        self.verify(code, unix_time, None)
    }
}

/// A new random secret, base32 (what authenticator apps take).
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(Secret::from(bytes).to_base32())
}

/// What an authenticator app is shown to enrol: the `otpauth://` URI and its QR code.
pub struct Enrolment {
    pub otpauth_url: String,
    pub qr_svg: String,
}

impl Enrolment {
    /// `None` when `secret` is not a valid secret or `account` cannot be a label (a colon).
    pub fn new(secret: &str, account: &str) -> Option<Self> {
        let totp = totp_rs::Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(DIGITS)
            .with_step_duration(STEP_SECONDS)
            .with_secret(Secret::try_from_base32(secret).ok()?)
            .with_issuer(Some(ISSUER))
            .with_account_name(account)
            .build()
            .ok()?;
        let otpauth_url = totp.to_url().ok()?;
        let qr_svg = QrCode::with_error_correction_level(otpauth_url.as_bytes(), EcLevel::M)
            .ok()?
            .render::<svg::Color<'_>>()
            .min_dimensions(240, 240)
            .build();
        Some(Self {
            otpauth_url,
            qr_svg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

    fn totp() -> TotpCode {
        TotpCode::from_base32(SECRET).unwrap()
    }

    #[test]
    fn accepts_the_current_and_neighbouring_steps() {
        let t = 1_700_000_000;
        let code = totp().generate(t);
        assert_eq!(totp().verify(&code, t, None), Some(t / 30));
        assert_eq!(totp().verify(&code, t + 30, None), Some(t / 30));
        assert_eq!(totp().verify(&code, t - 30, None), Some(t / 30));
        assert_eq!(totp().verify(&code, t + 90, None), None);
    }

    #[test]
    fn refuses_a_step_already_used_or_older() {
        let t = 1_700_000_000;
        let code = totp().generate(t);
        assert_eq!(totp().verify(&code, t, Some(t / 30)), None);
        assert_eq!(totp().verify(&code, t, Some(t / 30 + 1)), None);
        assert_eq!(totp().verify(&code, t, Some(t / 30 - 1)), Some(t / 30));
    }

    #[test]
    fn zero_skew_accepts_only_the_current_step() {
        let t = 1_700_000_000;
        let strict = TotpCode::with_skew(SECRET, 0).unwrap();
        let code = strict.generate(t);
        assert_eq!(strict.verify(&code, t, None), Some(t / 30));
        assert_eq!(strict.verify(&code, t + 30, None), None);
        let wide = TotpCode::with_skew(SECRET, 2).unwrap();
        assert_eq!(wide.verify(&code, t + 60, None), Some(t / 30));
    }

    #[test]
    fn a_new_secret_enrols_with_issuer_and_label() {
        let secret = new_secret().unwrap();
        assert_eq!(secret.len(), 32, "160 bits of base32");
        assert!(TotpCode::from_base32(&secret).is_some());
        let enrolment = Enrolment::new(&secret, "new.user@example.com").unwrap();
        assert!(
            enrolment
                .otpauth_url
                .starts_with("otpauth://totp/FinSec:new.user%40example.com?"),
            "{}",
            enrolment.otpauth_url
        );
        assert!(enrolment.otpauth_url.contains(&format!("secret={secret}")));
        assert!(enrolment.otpauth_url.contains("issuer=FinSec"));
        assert!(enrolment.qr_svg.starts_with("<?xml"));
        assert_ne!(new_secret().unwrap(), secret);
    }

    #[test]
    fn refuses_malformed_codes() {
        let t = 1_700_000_000;
        for code in ["", "12345", "1234567", "12a456", " 123456"] {
            assert_eq!(totp().verify(code, t, None), None, "{code:?}");
        }
    }

    #[test]
    fn refuses_bad_secrets() {
        assert!(TotpCode::from_base32("not base32!").is_none());
        assert!(
            TotpCode::from_base32("JBSWY3DP").is_none(),
            "40 bits is too short"
        );
    }
}
