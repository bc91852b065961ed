//! The HTTP API, end to end: a real server per test over its own fresh MariaDB database.

mod helpers;

mod admin;
mod browser;
mod chaos;
mod cli;
mod cluster;
mod console;
mod crash;
mod events;
mod expiry;
mod health;
mod introspection;
mod login;
mod logout;
mod metrics;
mod mfa;
mod mfa_lifecycle;
mod openapi;
mod outage;
mod overload;
mod password;
mod process;
mod random_input;
mod read_path;
mod resource_server;
mod restart;
mod secrets;
mod sessions;
mod shutdown;
mod signing_keys;
mod slow_clients;
mod supervision;
mod throttle;
mod tokens;
mod write_path;
