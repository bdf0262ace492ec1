//! The `webhookd` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use webhookd::cli::{self, AdminCommand, FAILURE_EXIT_CODE, Parsed, USAGE_EXIT_CODE};

fn main() -> ExitCode {
    let config = match cli::parse() {
        Parsed::Run(config) => config,
        Parsed::Exit(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Parsed::Usage(line) => {
            eprintln!("{line}");
            return ExitCode::from(USAGE_EXIT_CODE);
        }
    };
    if let Some(AdminCommand::CheckMap { map, sample }) = &config.command {
        return ExitCode::from(webhookd::check_map::run(map, sample));
    }
    if let Some(command) = &config.command {
        return match webhookd::admin::run(command, &config.data_dir, config.quiet) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("webhookd: error: {e}");
                ExitCode::from(FAILURE_EXIT_CODE)
            }
        };
    }
    cli::init_logging(config.log_format);
    match webhookd::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webhookd: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
