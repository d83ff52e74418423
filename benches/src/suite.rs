//! What is measured: suites (one per subcommand) of measurements, each a
//! server role, a client role, and the figures taken from the client with
//! the floor each is compared to.
//!
//! Adding a suite (pub/sub throughput, 1 MiB bandwidth, idle memory per
//! connection, another adapter, tarpc, ...) is adding an entry to
//! [`SUITES`] whose `build` returns its measurements; floors are named by
//! measurement id and looked up in the same run.

use crate::raw::MAX_WINDOW;
use crate::role::RoleSpec;
use crate::wharf_tokio::Flavor;

/// The options measurements are built from.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Windows (calls in flight) for throughput measurements.
    pub windows: Vec<usize>,
    /// tokio schedulers for wharf-tokio roles (each measured).
    pub flavors: Vec<Flavor>,
}

/// How a figure is shown and compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds, shown as microseconds; lower is better.
    Nanos,
    /// Per second; higher is better.
    PerSec,
}

/// One figure of a measurement.
#[derive(Clone, Debug)]
pub struct Figure {
    /// The metric key the client prints (e.g. `p50_ns`).
    pub key: &'static str,
    /// What the table calls it.
    pub label: String,
    /// Its unit.
    pub unit: Unit,
    /// The floor it is divided by: (measurement id, metric key), measured
    /// in the same round under the same pinning.
    pub floor: Option<(String, &'static str)>,
}

impl Figure {
    fn new(key: &'static str, label: impl Into<String>, unit: Unit) -> Self {
        Figure { key, label: label.into(), unit, floor: None }
    }

    fn vs(mut self, measurement: &str, key: &'static str) -> Self {
        self.floor = Some((measurement.to_string(), key));
        self
    }
}

/// One measurement: a server process, a client process, figures.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// Unique id within a run (floors refer to it).
    pub id: String,
    /// The table's row title.
    pub title: String,
    /// The server process.
    pub server: RoleSpec,
    /// The client process (prints the figures).
    pub client: RoleSpec,
    /// Figures reported.
    pub figures: Vec<Figure>,
}

/// A subcommand: a named group of measurements.
pub struct Suite {
    /// Subcommand name.
    pub name: &'static str,
    /// One line of help.
    pub about: &'static str,
    /// Its measurements under the given options.
    pub build: fn(&Opts) -> Vec<Measurement>,
}

/// Every suite; `all` runs them in this order.
pub const SUITES: &[Suite] = &[Suite {
    name: "unary",
    about: "unary calls, 64-byte payloads: raw std floors, wharf on tokio (latency, calls/s in flight)",
    build: unary,
}];

/// Latency percentiles of a back-to-back client.
fn latency_figures() -> Vec<Figure> {
    vec![
        Figure::new("p50_ns", "round trip p50", Unit::Nanos),
        Figure::new("p99_ns", "round trip p99", Unit::Nanos),
        Figure::new("p999_ns", "round trip p99.9", Unit::Nanos),
    ]
}

fn unary(opts: &Opts) -> Vec<Measurement> {
    const PP: &str = "raw-pingpong";
    let mut ms = vec![Measurement {
        id: PP.into(),
        title: "raw std ping-pong (floor)".into(),
        server: RoleSpec::new("raw-echo-server"),
        client: RoleSpec::new("raw-pingpong"),
        figures: latency_figures()
            .into_iter()
            .chain([Figure::new("calls_per_s", "calls/s, 1 in flight", Unit::PerSec)])
            .collect(),
    }];
    for &w in opts.windows.iter().filter(|&&w| w > 1 && w <= MAX_WINDOW) {
        ms.push(Measurement {
            id: format!("raw-window-{w}"),
            title: format!("raw std sliding window {w} (floor)"),
            server: RoleSpec::new("raw-echo-server"),
            client: RoleSpec::new("raw-window").with("window", w),
            figures: vec![Figure::new("calls_per_s", format!("calls/s, {w} in flight"), Unit::PerSec)],
        });
    }

    for &flavor in &opts.flavors {
        let server = RoleSpec::new("wharf-tokio-echo-server").with("flavor", flavor);
        ms.push(Measurement {
            id: format!("wharf-tokio-{flavor}-unary"),
            title: format!("wharf-tokio unary ({flavor}_thread)"),
            server: server.clone(),
            client: RoleSpec::new("wharf-tokio-unary").with("flavor", flavor),
            figures: latency_figures()
                .into_iter()
                .map(|f| {
                    let key = f.key;
                    f.vs(PP, key)
                })
                .chain([Figure::new("calls_per_s", "calls/s, 1 in flight", Unit::PerSec).vs(PP, "calls_per_s")])
                .collect(),
        });
        for &w in &opts.windows {
            let floor = if w == 1 { PP.to_string() } else { format!("raw-window-{w}") };
            ms.push(Measurement {
                id: format!("wharf-tokio-{flavor}-inflight-{w}"),
                title: format!("wharf-tokio {w} task{} in flight ({flavor}_thread)", if w == 1 { "" } else { "s" }),
                server: server.clone(),
                client: RoleSpec::new("wharf-tokio-inflight").with("flavor", flavor).with("window", w),
                figures: vec![
                    Figure::new("calls_per_s", format!("calls/s, {w} in flight"), Unit::PerSec)
                        .vs(&floor, "calls_per_s"),
                ],
            });
        }
    }
    ms
}
