//! An email address as the service keys accounts by: trimmed and lower-cased, so that
//! `John.Doe@Example.com` and `john.doe@example.com` are one account.

use std::fmt;

/// Longest address RFC 5321 allows in a forward path.
const MAX_LEN: usize = 254;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be a valid email address")]
pub struct InvalidEmail;

impl Email {
    /// Accepts `local@domain` with a non-empty local part and a dotted domain. Deliverability
    /// is not our business; telling typos from addresses we could have issued is.
    pub fn parse(raw: &str) -> Result<Self, InvalidEmail> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() || email.len() > MAX_LEN || email.chars().any(char::is_whitespace) {
            return Err(InvalidEmail);
        }
        let (local, domain) = email.split_once('@').ok_or(InvalidEmail)?;
        let domain_ok = !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.');
        if local.is_empty() || !domain_ok {
            return Err(InvalidEmail);
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_whitespace() {
        let email = Email::parse("  John.Doe@Example.COM ").unwrap();
        assert_eq!(email.as_str(), "john.doe@example.com");
    }

    #[test]
    fn rejects_what_cannot_be_an_address() {
        for raw in [
            "",
            "   ",
            "john",
            "@example.com",
            "john@",
            "john@localhost",
            "john@@example.com",
            "jo hn@example.com",
            "john@.example.com",
        ] {
            assert_eq!(Email::parse(raw), Err(InvalidEmail), "{raw:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&long), Err(InvalidEmail));
    }
}
