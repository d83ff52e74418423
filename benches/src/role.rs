//! The child side: `wharf-bench role NAME key=value...`.
//!
//! A role is one process of one measurement: a server (binds `socket`,
//! prints `ready`, serves until its standard input closes) or a client
//! (connects to `socket`, warms up, measures, prints `metric KEY VALUE`
//! lines and exits). Every role first pins itself to `pin=CPU` if given,
//! before it starts any thread.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::stats::{Metric, Timing};
use crate::{Result, affinity, idle, pubsub, raw, tokio_echo, wharf_mio, wharf_tokio};

/// How a role process is started: its name and parameters.
#[derive(Clone, Debug)]
pub struct RoleSpec {
    /// The role's name, as matched in [`run`].
    pub name: &'static str,
    /// `key=value` parameters besides the ones the orchestrator adds
    /// (`socket`, `pin`, `warmup`, `measure`).
    pub params: Vec<(&'static str, String)>,
}

impl RoleSpec {
    /// A role with no parameters yet.
    pub fn new(name: &'static str) -> Self {
        RoleSpec { name, params: Vec::new() }
    }

    /// Adds a parameter.
    pub fn with(mut self, key: &'static str, value: impl ToString) -> Self {
        self.params.push((key, value.to_string()));
        self
    }
}

/// A role's parameters, parsed from `key=value` arguments.
pub struct Params(HashMap<String, String>);

impl Params {
    fn parse(args: &[String]) -> Result<Params> {
        let mut map = HashMap::new();
        for a in args {
            let (k, v) = a.split_once('=').ok_or_else(|| format!("role parameter {a:?} is not key=value"))?;
            map.insert(k.to_string(), v.to_string());
        }
        Ok(Params(map))
    }

    /// A required parameter.
    pub fn get<T: FromStr>(&self, key: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.0.get(key).ok_or_else(|| format!("missing role parameter {key}"))?;
        v.parse().map_err(|e| format!("role parameter {key}={v:?}: {e}").into())
    }

    /// An optional parameter.
    pub fn opt<T: FromStr>(&self, key: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        if self.0.contains_key(key) { self.get(key).map(Some) } else { Ok(None) }
    }

    /// The socket path (`socket=`).
    pub fn socket(&self) -> Result<PathBuf> {
        self.get("socket")
    }

    /// Warm-up and measured period (`warmup=`, `measure=`, in seconds).
    pub fn timing(&self) -> Result<Timing> {
        Ok(Timing {
            warmup: Duration::from_secs_f64(self.get("warmup")?),
            measure: Duration::from_secs_f64(self.get("measure")?),
        })
    }
}

/// Entry point of a role process: `args` is `NAME key=value...`.
pub fn main(args: &[String]) -> Result<()> {
    let (name, rest) = args.split_first().ok_or("`role` needs a role name")?;
    let params = Params::parse(rest)?;
    if let Some(cpu) = params.opt::<usize>("pin")? {
        affinity::pin_to(cpu)?;
    }
    run(name, &params)
}

/// Every role by name. Servers return when done serving; clients return
/// after printing their figures.
pub fn run(name: &str, p: &Params) -> Result<()> {
    match name {
        // servers
        "raw-echo-server" => raw::echo_server(p),
        "raw-bulk-echo-server" => raw::bulk_echo_server(p),
        "raw-fanout-server" => pubsub::raw_fanout_server(p),
        "raw-hold-server" => idle::hold_server(p),
        "tokio-echo-server" => tokio_echo::echo_server(p),
        "wharf-tokio-echo-server" => wharf_tokio::echo_server(p),
        "wharf-tokio-pub-server" => pubsub::pub_server(p),
        "wharf-mio-echo-server" => wharf_mio::echo_server(p),
        // clients
        "raw-pingpong" => report(raw::pingpong(p)?),
        "raw-window" => report(raw::window(p)?),
        "raw-bulk" => report(raw::bulk(p)?),
        "raw-fanout-sub" => report(pubsub::raw_fanout_client(p)?),
        "raw-idle" => report(idle::raw_client(p)?),
        "tokio-echo-pingpong" => report(tokio_echo::pingpong(p)?),
        "tokio-echo-idle" => report(idle::tokio_echo_client(p)?),
        "wharf-tokio-unary" => report(wharf_tokio::unary_latency(p)?),
        "wharf-tokio-inflight" => report(wharf_tokio::inflight(p)?),
        "wharf-tokio-bulk" => report(wharf_tokio::bulk(p)?),
        "wharf-tokio-sub" => report(pubsub::sub_client(p)?),
        "wharf-tokio-idle" => report(idle::wharf_client(p)?),
        "wharf-mio-blocking-unary" => report(wharf_mio::blocking_unary(p)?),
        other => peer(other, p),
    }
}

/// The peers' roles (cargo features `tarpc`, `zmq`).
fn peer(name: &str, p: &Params) -> Result<()> {
    #[cfg(feature = "tarpc")]
    match name {
        "tarpc-echo-server" => return crate::peers::tarpc::echo_server(p),
        "tarpc-unary" => return report(crate::peers::tarpc::unary_latency(p)?),
        "tarpc-inflight" => return report(crate::peers::tarpc::inflight(p)?),
        _ => {}
    }
    #[cfg(feature = "zmq")]
    match name {
        "zmq-rep-server" => return crate::peers::zmq::rep_server(p),
        "zmq-router-server" => return crate::peers::zmq::router_server(p),
        "zmq-xpub-server" => return crate::peers::zmq::xpub_server(p),
        "zmq-req" => return report(crate::peers::zmq::req(p)?),
        "zmq-dealer" => return report(crate::peers::zmq::dealer(p)?),
        "zmq-sub" => return report(crate::peers::zmq::sub(p)?),
        _ => {}
    }
    let _ = p;
    Err(format!("unknown role {name:?} (peers need their cargo features: --features tarpc,zmq)").into())
}

/// A client's figures, as the orchestrator parses them.
fn report(metrics: Vec<Metric>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for (k, v) in metrics {
        writeln!(out, "metric {k} {v}")?;
    }
    out.flush()?;
    Ok(())
}

/// Called by a server once it accepts connections: tells the orchestrator
/// (which waits for this line before starting the client), and ends this
/// process when the orchestrator closes our standard input.
pub fn server_ready() -> Result<()> {
    server_ready_reporting(Vec::new)
}

/// [`server_ready`] for a server with figures of its own: when the
/// orchestrator closes our standard input (after the client has finished),
/// `report` is called and its figures are printed as `metric KEY VALUE`
/// lines before the process ends. Their keys start with `srv_` so they
/// cannot collide with the client's.
pub fn server_ready_reporting(report: impl Fn() -> Vec<Metric> + Send + 'static) -> Result<()> {
    std::thread::Builder::new().name("stdin-watch".into()).spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let mut out = std::io::stdout().lock();
        for (k, v) in report() {
            let _ = writeln!(out, "metric {k} {v}");
        }
        let _ = out.flush();
        std::process::exit(0);
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    Ok(())
}
