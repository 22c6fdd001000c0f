//! `ferrovm img`: the disk-image tool (the qemu-img role). Owned by the block/qcow2 work.

use clap::{Args, Subcommand};

/// Arguments of `ferrovm img`.
#[derive(Debug, Args)]
pub struct ImgArgs {
    #[command(subcommand)]
    pub command: ImgCommand,
}

/// `ferrovm img` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImgCommand {
    /// Show information about an image.
    Info {
        /// Image file.
        file: std::path::PathBuf,
    },
}

/// Runs an `img` subcommand; returns the process exit status.
pub fn run(args: ImgArgs) -> anyhow::Result<u8> {
    match args.command {
        ImgCommand::Info { file } => {
            anyhow::bail!("img info {}: not implemented yet", file.display())
        }
    }
}
