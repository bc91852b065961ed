//! What a new password must be (ASVS 5.0 6.2): long enough, not absurdly long (scrypt would
//! hash it all), not the user's own details, not the current one, and not guessable by
//! zxcvbn's estimate (score 3 of 4 at least: "safely unguessable", ~10^8 guesses).

/// The longest password accepted: enough for any passphrase, short of a hashing DoS.
pub const MAX_PASSWORD_CHARS: usize = 128;

/// The lowest zxcvbn score accepted.
const MIN_SCORE: u8 = 3;

#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    pub min_length: usize,
}

impl PasswordPolicy {
    /// `Err` says why, in words a user can act on.
    pub fn check(&self, new: &str, current: &str, personal: &[&str]) -> Result<(), String> {
        let length = new.chars().count();
        if length < self.min_length {
            return Err(format!(
                "the new password must be at least {} characters long",
                self.min_length
            ));
        }
        if length > MAX_PASSWORD_CHARS {
            return Err(format!(
                "the new password must be at most {MAX_PASSWORD_CHARS} characters long"
            ));
        }
        if new == current {
            return Err("the new password must differ from the current one".into());
        }
        if personal
            .iter()
            .any(|p| !p.is_empty() && new.trim().eq_ignore_ascii_case(p))
        {
            return Err("the new password must not be your email address or name".into());
        }
        let estimate = zxcvbn::zxcvbn(new, personal);
        if u8::from(estimate.score()) < MIN_SCORE {
            let mut why = String::from("the new password is too easy to guess");
            if let Some(feedback) = estimate.feedback() {
                if let Some(warning) = feedback.warning() {
                    why.push_str(&format!(": {warning}"));
                }
                if let Some(tip) = feedback.suggestions().first() {
                    why.push_str(&format!(" ({tip})"));
                }
            }
            return Err(why);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PasswordPolicy {
        PasswordPolicy { min_length: 12 }
    }

    #[test]
    fn strong_new_passwords_pass() {
        assert_eq!(
            policy().check("correct horse battery staple 42", "old one", &[]),
            Ok(())
        );
    }

    #[test]
    fn each_rule_says_what_is_wrong() {
        let cases = [
            ("short", "at least 12"),
            (&"x".repeat(129), "at most 128"),
            ("the current passphrase", "differ from the current"),
            ("ADA@EXAMPLE.COM", "email address or name"),
            ("password12345", "too easy to guess"),
        ];
        for (new, expected) in cases {
            let err = policy()
                .check(new, "the current passphrase", &["ada@example.com", "Ada"])
                .unwrap_err();
            assert!(err.contains(expected), "{new}: {err}");
        }
    }
}
