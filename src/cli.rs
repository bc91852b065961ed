//! The `finsec` command line: `serve` (the default), `migrate`, `seed`, `config check`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "finsec",
    version,
    about = "FinSec Sessions: login, MFA and live sessions for the FinSec Banking API"
)]
pub struct Cli {
    /// Folder holding default.toml and the FINSEC_ENV overlays.
    #[arg(
        long,
        env = "FINSEC_CONFIG_DIR",
        default_value = "config",
        global = true
    )]
    pub config_dir: PathBuf,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default when no command is given).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Create the demo users (idempotent) and print one line per user. Their passwords and
    /// TOTP secrets are published in this repository: refused under FINSEC_ENV=production.
    Seed {
        /// Seed them even in production (a staging copy, say), knowing that anyone can log in.
        #[arg(long)]
        i_know_demo: bool,
    },
    /// Keys: token signing keys (`jwt.keys_dir`), and encryption keys for secrets at rest
    /// (`security.encryption_key`).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Operators: a user's live sessions, read from and revoked in MySQL. With
    /// cluster.bus_url every live node confirms a revocation before the command succeeds;
    /// without, it writes only while no service runs (or through a running one's admin API).
    Sessions {
        #[command(subcommand)]
        action: SessionsAction,
        /// A single-node service's base URL, for its admin API (default: from http.host and
        /// http.port).
        #[arg(long, global = true)]
        url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsAction {
    /// List the user's live sessions.
    List {
        #[arg(long)]
        user: String,
    },
    /// Forced logout of every device of the user.
    RevokeAll {
        #[arg(long)]
        user: String,
        /// Recorded with each revoked session.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Write a new private key for signing access tokens into DIR as `<kid>.pem` (owner-only);
    /// once every node reads it, it signs and the older keys only verify. Prints its path.
    Generate {
        /// The folder of signing keys (default: jwt.keys_dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// EdDSA (Ed25519) or ES256 (P-256) (default: jwt.algorithm when it is one of them,
        /// else EdDSA).
        #[arg(long)]
        algorithm: Option<String>,
    },
    /// Print a new random key (32 bytes, base64) for security.encryption_key.
    GenerateEncryptionKey,
    /// Re-encrypt every TOTP secret under security.encryption_key, opening each with the key
    /// that sealed it (keep the old ones in security.previous_encryption_keys until this has
    /// run). Safe while the service runs, and safe to run again.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Load and validate the configuration, print a summary without secrets, and exit.
    Check,
}
