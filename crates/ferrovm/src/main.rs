//! The `ferrovm` binary: command line -> configuration -> VMM. No VM logic lives here.

mod img;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// ferrovm: a virtual machine monitor for Linux/KVM.
#[derive(Debug, Parser)]
#[command(name = "ferrovm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Disk-image tool (create, info, check, convert, resize, map).
    Img(img::ImgArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Img(args) => img::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ferrovm: {e:#}");
            ExitCode::from(1)
        }
    }
}
