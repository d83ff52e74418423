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
use crate::{Result, affinity, raw, wharf_tokio};

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
        "wharf-tokio-echo-server" => wharf_tokio::echo_server(p),
        // clients
        "raw-pingpong" => report(raw::pingpong(p)?),
        "raw-window" => report(raw::window(p)?),
        "wharf-tokio-unary" => report(wharf_tokio::unary_latency(p)?),
        "wharf-tokio-inflight" => report(wharf_tokio::inflight(p)?),
        other => Err(format!("unknown role {other:?}").into()),
    }
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
    std::thread::Builder::new().name("stdin-watch".into()).spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    Ok(())
}
