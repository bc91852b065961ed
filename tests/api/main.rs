//! The HTTP API, end to end: a real server per test over its own fresh MariaDB database.

mod helpers;

mod health;
mod login;
mod logout;
mod mfa;
mod restart;
mod secrets;
mod supervision;
mod tokens;
mod write_path;
