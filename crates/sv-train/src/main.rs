//! `sv-train`: command-line front end of the sv-train library.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sv-train", version, about = "Train and evaluate StreetVision roadwork heads on a frozen DINOv3")]
struct Cli {
    /// Experiment TOML to train (e.g. experiments/curriculum.toml).
    #[arg(long)]
    experiment: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train an experiment and write its run folder.
    Train {
        #[arg(long)]
        experiment: PathBuf,
    },
    /// Run several experiments on the same data and seed and write a comparison table.
    Compare {
        /// Experiment TOMLs.
        #[arg(required = true)]
        experiments: Vec<PathBuf>,
        /// Folder for the comparison (default: runs).
        #[arg(long, default_value = "runs")]
        out: PathBuf,
    },
    /// Evaluate a saved checkpoint on an experiment's data.
    Evaluate {
        #[arg(long)]
        experiment: PathBuf,
        /// A run's `checkpoint/` folder.
        #[arg(long)]
        checkpoint: PathBuf,
    },
}

fn main() {
    sv_data::progress::init_tracing("warn,sv_train=info,sv_data=info");
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match (cli.cmd, cli.experiment) {
        (Some(Cmd::Train { experiment }), _) | (None, Some(experiment)) => {
            sv_train::run::run_experiment(&experiment)?;
        }
        (Some(Cmd::Compare { experiments, out }), _) => {
            sv_train::run::compare(&experiments, &out)?;
        }
        (Some(Cmd::Evaluate { experiment, checkpoint }), _) => {
            let metrics = sv_train::run::evaluate_checkpoint(&experiment, &checkpoint)?;
            for (split, m) in &metrics {
                println!("{split:>5}: {m}");
            }
            println!("{}", serde_json::to_string_pretty(&metrics)?);
        }
        (None, None) => {
            anyhow::bail!("nothing to do: pass --experiment <toml>, or a subcommand (see --help)");
        }
    }
    Ok(())
}
