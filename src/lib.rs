//! FinSec Sessions: logs people in (email + password, then TOTP where enabled), holds their
//! live sessions across devices, and ends them the moment they are revoked.
//!
//! Data flows one way: [`http`] (warp handlers) → [`sessions`] (one ractor actor per active
//! user, under a supervisor) → [`cluster`] (leases and the NATS bus that keep several
//! instances one service) → [`store`] (MySQL or in-memory). [`auth`] is the credentials
//! toolbox (scrypt, TOTP, JWT) the layers above the store use; [`domain`] holds the values
//! every layer speaks in; [`error`] is the one place errors become HTTP responses.
//! [`config`], [`startup`], [`commands`], [`operator`], [`telemetry`], [`seed`] and [`cli`] wire it together for `main`.

pub mod allocator;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod http;
pub mod metrics;
pub mod operator;
pub mod seed;
pub mod sessions;
pub mod startup;
pub mod store;
pub mod telemetry;
