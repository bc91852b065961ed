//! Times in responses, written exactly as chrono's own `Serialize` writes them (RFC 3339, UTC
//! as `Z`, as many fraction digits as the time has: 0, 3, 6 or 9), but formatted into one
//! string first. chrono serialises through `collect_str`, which hands serde_json each piece
//! of the format separately, every piece escaped on its own: about 2,500 instructions a
//! time, and `/api/auth/me` sends five (measured with callgrind).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// For `#[serde(serialize_with = "crate::domain::timestamp::rfc3339")]`.
pub fn rfc3339<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde::Serialize;

    use super::*;

    #[derive(Serialize)]
    struct Ours(#[serde(serialize_with = "rfc3339")] DateTime<Utc>);

    /// Byte for byte what chrono writes: clients parse these, and a change of format would be
    /// a change of the API.
    #[test]
    fn writes_what_chrono_writes() {
        let base = Utc.with_ymd_and_hms(2026, 12, 7, 15, 57, 2).unwrap();
        let fractions = [
            0,
            1,
            120,
            322_000,
            322_619,
            1_000_000,
            322_000_000,
            999_999_999,
        ];
        let days = [0, 1, 59, 365, 10_000, -20_000];
        for nanos in fractions {
            for days in days {
                let at = base + chrono::Duration::days(days) + chrono::Duration::nanoseconds(nanos);
                assert_eq!(
                    serde_json::to_string(&Ours(at)).unwrap(),
                    serde_json::to_string(&at).unwrap(),
                    "{at:?}"
                );
            }
        }
        let now = Utc::now();
        assert_eq!(
            serde_json::to_string(&Ours(now)).unwrap(),
            serde_json::to_string(&now).unwrap()
        );
    }
}
