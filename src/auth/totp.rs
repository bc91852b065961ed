//! TOTP codes (RFC 6238: SHA1, 6 digits, 30 s steps, one step of skew either side) with a
//! replay guard: a code is identified by its time step, and only a step newer than the last
//! one accepted for the user is accepted, so each code works once, ever.
//!
//! All three candidate steps are compared, each in constant time, without stopping at the
//! first match, so the time taken says nothing about which step (if any) matched.

use totp_rs::{Algorithm, Secret, Totp};

const DIGITS: u8 = 6;
const STEP_SECONDS: u64 = 30;
const SKEW_STEPS: u64 = 1;

/// The per-user TOTP generator; build it from the stored base32 secret.
pub struct TotpCode(Totp);

impl TotpCode {
    /// `None` when the stored secret is not valid base32 or too short to be a real secret.
    pub fn from_base32(secret: &str) -> Option<Self> {
        let bytes = Secret::try_from_base32(secret).ok()?;
        totp_rs::Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(DIGITS)
            .with_step_duration(STEP_SECONDS)
            .with_skew(SKEW_STEPS as u16)
            .with_secret(bytes)
            .build()
            .ok()
            .map(Self)
    }

    /// The time step `code` belongs to at `unix_time`, if it is valid for any step in the
    /// window and that step is newer than `last_step`.
    pub fn verify(&self, code: &str, unix_time: u64, last_step: Option<u64>) -> Option<u64> {
        if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now_step = unix_time / STEP_SECONDS;
        let mut matched = None;
        for step in now_step.saturating_sub(SKEW_STEPS)..=now_step + SKEW_STEPS {
            let expected = self.0.generate(step * STEP_SECONDS).to_string();
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
        self.0.generate(unix_time).to_string()
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
