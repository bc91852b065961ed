//! A rate limit per client IP on the endpoints that take credentials (login, verify-mfa,
//! change-password, the admin API): `security.ip_rate` per second with bursts of
//! `security.ip_burst` (GCRA, the `governor` crate), `429 rate_limited` with `Retry-After`
//! beyond. It complements the per-account throttle: that one stops guessing one account from
//! many addresses, this one stops one address from spraying many accounts.
//!
//! The client IP is the socket peer, unless the peer is a proxy listed in
//! `http.trusted_proxies`: then it is the rightmost `X-Forwarded-For` entry that is not itself a
//! trusted proxy (entries further left were written by the client and prove nothing).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use warp::{Filter, Rejection};

use super::AppState;
use super::extract::with_state;
use super::server::ClientAddr;
use crate::error::ApiError;

pub struct IpRateLimit {
    limiter: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    trusted_proxies: Vec<IpAddr>,
}

impl IpRateLimit {
    /// `rate` 0 turns the limit off.
    pub fn new(rate: u32, burst: u32, trusted_proxies: Vec<IpAddr>) -> Self {
        let limiter = NonZeroU32::new(rate).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        Self {
            limiter,
            trusted_proxies,
        }
    }

    /// The address the request is from, as far as we can trust it.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        forwarded_for
            .into_iter()
            .flat_map(|header| header.rsplit(','))
            .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
            .find(|ip| !self.trusted_proxies.contains(ip))
            .unwrap_or(peer)
    }

    /// Counts a request from `peer` (forwarded for someone, maybe) against its client's rate;
    /// returns that client. A request with no peer (an in-process call) is not counted.
    pub fn admit(
        &self,
        peer: Option<ClientAddr>,
        forwarded_for: Option<&str>,
    ) -> Result<Option<IpAddr>, ApiError> {
        let Some(peer) = peer else {
            return Ok(None);
        };
        let ip = self.client_ip(peer.0.ip(), forwarded_for);
        self.check(ip)?;
        Ok(Some(ip))
    }

    fn check(&self, ip: IpAddr) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited(wait.as_secs() + 1)
        })
    }

    /// Forgets addresses whose buckets are full again (memory stays bounded by recent ones).
    pub fn prune(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Passes when the client's address is within its rate; rejects with 429 otherwise.
pub fn within_rate(state: Arc<AppState>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::ext::optional::<ClientAddr>()
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and(with_state(state))
        .and_then(
            |peer: Option<ClientAddr>, forwarded: Option<String>, state: Arc<AppState>| async move {
                state
                    .ip_rate
                    .admit(peer, forwarded.as_deref())
                    .map(|_| ())
                    .map_err(warp::reject::custom)
            },
        )
        .untuple_one()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let limit = IpRateLimit::new(1, 1, vec![proxy]);
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        // Behind the proxy: the entry it added (the rightmost), not what the client wrote.
        assert_eq!(
            limit.client_ip(proxy, Some("198.51.100.1, 203.0.113.7")),
            client
        );
        // Straight from a client: its header is ignored.
        assert_eq!(limit.client_ip(client, Some("198.51.100.1")), client);
        assert_eq!(limit.client_ip(proxy, None), proxy);
    }

    #[test]
    fn the_burst_passes_then_the_rate_holds() {
        let limit = IpRateLimit::new(1, 2, vec![]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limit.check(ip).is_ok());
        assert!(limit.check(ip).is_ok());
        assert!(matches!(limit.check(ip), Err(ApiError::RateLimited(_))));
        assert!(
            limit.check("192.0.2.2".parse().unwrap()).is_ok(),
            "per address"
        );
        assert!(
            IpRateLimit::new(0, 0, vec![]).check(ip).is_ok(),
            "0 turns it off"
        );
    }
}
