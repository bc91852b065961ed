//! `finsec`: parse the command line, load config, start logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use finsec::cli::{Cli, Command, ConfigAction, KeysAction, SessionsAction};
use finsec::config::Settings;
use finsec::{commands, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.config_dir) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("finsec: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    // Hashes run on threads of their own (auth::password); the blocking pool does little
    // (name lookups, the journal's file): no more threads than that needs.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(16)
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli, settings)),
        Err(err) => {
            eprintln!("finsec: cannot start the runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, settings: Settings) -> ExitCode {
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command.unwrap_or(Command::Serve)
    {
        Command::Serve => {
            if let Err(err) = commands::serve(&settings).await {
                eprintln!("finsec: {err}");
                return ExitCode::from(err.exit_code());
            }
            Ok(())
        }
        Command::Migrate => commands::migrate(&settings).await.map_err(Into::into),
        Command::Seed { i_know_demo } => commands::seed(&settings, i_know_demo)
            .await
            .map_err(Into::into),
        Command::Keys { action } => match action {
            KeysAction::Generate { dir, algorithm } => {
                commands::generate_signing_key(&settings, dir, algorithm).map_err(Into::into)
            }
            KeysAction::GenerateEncryptionKey => {
                commands::generate_encryption_key().map_err(Into::into)
            }
            KeysAction::Rotate => commands::rotate_keys(&settings).await.map_err(Into::into),
        },
        Command::Config {
            action: ConfigAction::Check,
        } => commands::check_config(&settings).map_err(Into::into),
        Command::Sessions { action, url } => match action {
            SessionsAction::List { user } => commands::sessions_list(&settings, &user)
                .await
                .map_err(Into::into),
            SessionsAction::RevokeAll { user, reason } => {
                commands::sessions_revoke_all(&settings, url, &user, reason)
                    .await
                    .map_err(Into::into)
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("finsec: {err}");
            ExitCode::FAILURE
        }
    }
}
