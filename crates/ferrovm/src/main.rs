//! The `ferrovm` binary: command line -> configuration -> VMM. No VM logic lives here.

mod cli;
mod ctl;
mod img;
mod jail_cmd;
mod snapshot_cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let logger = vmm::logger::init();
    let result = match cli.command {
        cli::Command::KvmInfo(args) => cli::kvm_info(args),
        cli::Command::Run(args) => cli::run(*args, logger),
        cli::Command::Img(args) => img::run(args),
        cli::Command::Ctl(args) => ctl::run(args),
        cli::Command::Snapshot(args) => snapshot_cmd::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ferrovm: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line, skipping causes the message already includes.
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}
