//! `finsec`: parse the command line, load config, start logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use finsec::cli::{Cli, Command, ConfigAction};
use finsec::config::Settings;
use finsec::{commands, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.config_dir) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("finsec: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => commands::serve(&settings).await,
        Command::Migrate => commands::migrate(&settings).await,
        Command::Seed => commands::seed(&settings).await,
        Command::Config {
            action: ConfigAction::Check,
        } => commands::check_config(&settings),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("finsec: {err}");
            ExitCode::FAILURE
        }
    }
}
