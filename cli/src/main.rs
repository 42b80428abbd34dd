//! `berth`: start and inspect a node.

mod control;
mod doctor;
mod events;
mod logs;
mod nats;
mod node;
mod status;

use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "berth", version, about = "A Docker-compatible container engine on a NATS bus")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a node in the foreground: nats-server, every service, the gateway.
    Up(node::UpArgs),
    /// Show each service of a running node, its pid and health.
    Status {
        /// Data root of the node.
        #[arg(long)]
        root: Option<PathBuf>,
        /// daemon.json to read data-root from.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Tail the node's events live, as they cross the bus.
    Events {
        #[arg(long)]
        root: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Docker's event filters (type=container, container=web, event=die, label=k=v...).
        #[arg(short, long = "filter")]
        filter: Vec<String>,
        /// One JSON object per event.
        #[arg(long)]
        json: bool,
    },
    /// Hand the running node over to the berth binaries now installed (an upgrade).
    ///
    /// `berth up` re-executes itself and replaces its services one at a time;
    /// containers, their logs and the API socket stay. Waits until done.
    Upgrade(control::Target),
    /// Stop the running node as SIGTERM does (without live-restore, its containers stop).
    Down(control::Target),
    /// Check what a node needs from this host; print a fix for each problem.
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        shell: clap_complete::Shell,
    },
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Up(a) => node::up(a),
        Cmd::Status { root, config } => status::status(root, config),
        Cmd::Events { root, config, filter, json } => events::events(root, config, filter, json),
        Cmd::Upgrade(t) => control::upgrade(t),
        Cmd::Down(t) => control::down(t),
        Cmd::Doctor(a) => doctor::doctor(a),
        Cmd::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "berth", &mut std::io::stdout());
            Ok(())
        }
    };
    if let Err(e) = res {
        eprintln!("berth: {e:#}");
        std::process::exit(1);
    }
}
