//! `kiln net create|ls|rm`: Kiln's private networks, one call into kiln-fleet each.

use crate::dirs;
use anyhow::Result;
use clap::Subcommand;
use std::process::ExitCode;

/// `kiln net`: private networks between VMs, no root needed.
#[derive(Subcommand, Debug)]
pub enum NetCmd {
    /// Make a net and start its switch; VMs join it with `kiln run --net NAME`.
    Create {
        /// The net's name.
        name: String,
        /// Its IPv4 subnet, A.B.C.D/N with N from 16 to 29 (default: the first free
        /// 10.88.N.0/24).
        #[arg(long)]
        subnet: Option<kiln_fleet::Subnet>,
    },
    /// List the nets, their switches and members.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a net's switch and forget the net (refused while a VM is on it).
    Rm {
        /// The nets.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Carry out a `kiln net` subcommand.
pub fn net(cmd: NetCmd) -> Result<ExitCode> {
    let fleet = dirs::fleet()?;
    match cmd {
        NetCmd::Create { name, subnet } => {
            let row = fleet.net_create(&name, subnet)?;
            eprintln!(
                "kiln: net {name} on {} (switch pid {}); join it with `kiln run --net {name}`",
                row.subnet,
                row.switch_pid.unwrap_or(0)
            );
        }
        NetCmd::Ls { json } => {
            let rows = fleet.nets();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<16} {:<18} {:>8} {:>4}  MEMBERS",
                    "NAME", "SUBNET", "SWITCH", "RST"
                );
                for r in rows {
                    let members: Vec<String> = r
                        .members
                        .iter()
                        .map(|m| format!("{}={}", m.name, m.addr))
                        .collect();
                    println!(
                        "{:<16} {:<18} {:>8} {:>4}  {}",
                        r.name,
                        r.subnet.to_string(),
                        r.switch_pid
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| "down".into()),
                        r.restarts,
                        if members.is_empty() {
                            "-".to_string()
                        } else {
                            members.join(" ")
                        }
                    );
                }
            }
        }
        NetCmd::Rm { names } => {
            for name in names {
                fleet.net_rm(&name)?;
                eprintln!("kiln: removed net {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
