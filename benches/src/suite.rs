//! What is measured: suites (one per subcommand) of measurements, each a
//! server role, a client role, and the figures taken from the client (and
//! the server) with the floor each is compared to.
//!
//! Adding a suite is adding an entry to [`SUITES`] whose `build` returns its
//! measurements; floors are named by measurement id and looked up in the
//! same run. A suite lists the floors it needs itself; when several suites
//! run together a measurement id that occurs twice is measured once.

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
    /// Subscriber counts for the pub/sub measurements.
    pub subs: Vec<usize>,
    /// Connection counts for the idle-memory measurements.
    pub conns: Vec<usize>,
    /// Payload size of the bandwidth measurements, in bytes.
    pub bulk: usize,
}

/// How a figure is shown and compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds, shown as microseconds; lower is better.
    Nanos,
    /// Per second; higher is better.
    PerSec,
    /// MiB per second; higher is better.
    MiBPerSec,
    /// Bytes, shown as bytes; lower is better.
    Bytes,
    /// Bytes, shown as MiB; lower is better.
    MiB,
    /// A count of events (e.g. messages lost).
    Count,
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
    /// Measured under the first pinning only (its figures do not depend on
    /// where the processes run, and it is slow).
    pub once: bool,
}

impl Measurement {
    fn new(id: impl Into<String>, title: impl Into<String>, server: RoleSpec, client: RoleSpec) -> Self {
        Measurement { id: id.into(), title: title.into(), server, client, figures: Vec::new(), once: false }
    }

    fn figures(mut self, figures: impl IntoIterator<Item = Figure>) -> Self {
        self.figures.extend(figures);
        self
    }
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
pub const SUITES: &[Suite] = &[
    Suite {
        name: "unary",
        about: "unary calls, 64-byte payloads: raw std and tokio floors, wharf on tokio (latency, calls/s in flight)",
        build: unary,
    },
    Suite {
        name: "pubsub",
        about: "pub/sub messages/s of 64-byte payloads to each --subs count: raw std fan-out floor, wharf",
        build: pubsub,
    },
    Suite {
        name: "bandwidth",
        about: "a --bulk payload (1 MiB) echoed per call, MiB/s: raw std ping-pong floor, wharf",
        build: bandwidth,
    },
    Suite {
        name: "idle",
        about: "server memory per idle connection at each --conns count: raw std and tokio floors, wharf",
        build: idle,
    },
    Suite {
        name: "peers",
        about: "other IPC stacks beside the floors: tarpc (feature tarpc), ZeroMQ (feature zmq)",
        build: peers,
    },
];

/// The peers this build includes (cargo features).
pub fn peers_built() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "tarpc") {
        v.push("tarpc");
    }
    if cfg!(feature = "zmq") {
        v.push("zmq");
    }
    v
}

/// Latency percentiles of a back-to-back client.
fn latency_figures() -> Vec<Figure> {
    vec![
        Figure::new("p50_ns", "round trip p50", Unit::Nanos),
        Figure::new("p99_ns", "round trip p99", Unit::Nanos),
        Figure::new("p999_ns", "round trip p99.9", Unit::Nanos),
    ]
}

/// Latency percentiles and calls/s, each against the same figure of `floor`.
fn latency_vs(floor: &str) -> Vec<Figure> {
    latency_figures()
        .into_iter()
        .chain([Figure::new("calls_per_s", "calls/s, 1 in flight", Unit::PerSec)])
        .map(|f| {
            let key = f.key;
            f.vs(floor, key)
        })
        .collect()
}

const PP: &str = "raw-pingpong";

fn window_floor(w: usize) -> String {
    if w == 1 { PP.to_string() } else { format!("raw-window-{w}") }
}

/// The raw std floors of unary calls: ping-pong and each window above 1.
fn raw_unary(opts: &Opts) -> Vec<Measurement> {
    let mut ms = vec![
        Measurement::new(
            PP,
            "raw std ping-pong (floor)",
            RoleSpec::new("raw-echo-server"),
            RoleSpec::new("raw-pingpong"),
        )
        .figures(latency_figures().into_iter().chain([Figure::new(
            "calls_per_s",
            "calls/s, 1 in flight",
            Unit::PerSec,
        )])),
    ];
    for &w in opts.windows.iter().filter(|&&w| w > 1 && w <= MAX_WINDOW) {
        ms.push(
            Measurement::new(
                format!("raw-window-{w}"),
                format!("raw std sliding window {w} (floor)"),
                RoleSpec::new("raw-echo-server"),
                RoleSpec::new("raw-window").with("window", w),
            )
            .figures([Figure::new("calls_per_s", format!("calls/s, {w} in flight"), Unit::PerSec)]),
        );
    }
    ms
}

fn unary(opts: &Opts) -> Vec<Measurement> {
    let mut ms = raw_unary(opts);
    for &flavor in &opts.flavors {
        let echo = format!("tokio-echo-{flavor}");
        ms.push(
            Measurement::new(
                &echo,
                format!("tokio echo ping-pong ({flavor}_thread, floor)"),
                RoleSpec::new("tokio-echo-server").with("flavor", flavor),
                RoleSpec::new("tokio-echo-pingpong").with("flavor", flavor),
            )
            .figures(latency_vs(PP)),
        );
    }
    for &flavor in &opts.flavors {
        let echo = format!("tokio-echo-{flavor}");
        let server = RoleSpec::new("wharf-tokio-echo-server").with("flavor", flavor);
        ms.push(
            Measurement::new(
                format!("wharf-tokio-{flavor}-unary"),
                format!("wharf-tokio unary ({flavor}_thread)"),
                server.clone(),
                RoleSpec::new("wharf-tokio-unary").with("flavor", flavor),
            )
            .figures(latency_vs(PP))
            .figures([
                Figure::new("p50_ns", "round trip p50", Unit::Nanos).vs(&echo, "p50_ns"),
                Figure::new("p99_ns", "round trip p99", Unit::Nanos).vs(&echo, "p99_ns"),
                Figure::new("calls_per_s", "calls/s, 1 in flight", Unit::PerSec).vs(&echo, "calls_per_s"),
            ]),
        );
        // The blocking client (wharf-mio) against this tokio server.
        ms.push(
            Measurement::new(
                format!("wharf-mio-blocking-on-tokio-{flavor}-unary"),
                format!("wharf-mio blocking client, wharf-tokio server ({flavor}_thread)"),
                server.clone(),
                RoleSpec::new("wharf-mio-blocking-unary"),
            )
            .figures(latency_vs(PP)),
        );
        for &w in &opts.windows {
            ms.push(
                Measurement::new(
                    format!("wharf-tokio-{flavor}-inflight-{w}"),
                    format!("wharf-tokio {w} task{} in flight ({flavor}_thread)", if w == 1 { "" } else { "s" }),
                    server.clone(),
                    RoleSpec::new("wharf-tokio-inflight").with("flavor", flavor).with("window", w),
                )
                .figures([Figure::new("calls_per_s", format!("calls/s, {w} in flight"), Unit::PerSec)
                    .vs(&window_floor(w), "calls_per_s")]),
            );
        }
    }
    // No runtime on either side: the blocking client against a mio loop.
    ms.push(
        Measurement::new(
            "wharf-mio-unary",
            "wharf-mio blocking client, wharf-mio loop server",
            RoleSpec::new("wharf-mio-echo-server"),
            RoleSpec::new("wharf-mio-blocking-unary"),
        )
        .figures(latency_vs(PP)),
    );
    ms
}

/// Throughput figures of a pub/sub measurement with `n` subscribers
/// against the raw fan-out of `n`.
fn pubsub_figures(n: usize) -> Vec<Figure> {
    let floor = format!("raw-fanout-{n}");
    vec![
        Figure::new("msgs_per_s", format!("messages/s received, {n} subscriber{} together", plural(n)), Unit::PerSec)
            .vs(&floor, "msgs_per_s"),
        Figure::new("per_sub_msgs_per_s", "messages/s per subscriber (mean)", Unit::PerSec)
            .vs(&floor, "per_sub_msgs_per_s"),
        Figure::new("min_sub_msgs_per_s", "messages/s, slowest subscriber", Unit::PerSec)
            .vs(&floor, "min_sub_msgs_per_s"),
        Figure::new("lost", "messages lost in the measured period (sequence gaps)", Unit::Count),
    ]
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The raw std fan-out floors, one per subscriber count.
fn raw_fanout(opts: &Opts) -> Vec<Measurement> {
    opts.subs
        .iter()
        .map(|&n| {
            Measurement::new(
                format!("raw-fanout-{n}"),
                format!("raw std fan-out to {n} subscriber{} (floor)", plural(n)),
                RoleSpec::new("raw-fanout-server").with("subs", n),
                RoleSpec::new("raw-fanout-sub").with("subs", n),
            )
            .figures([
                Figure::new(
                    "msgs_per_s",
                    format!("messages/s received, {n} subscriber{} together", plural(n)),
                    Unit::PerSec,
                ),
                Figure::new("per_sub_msgs_per_s", "messages/s per subscriber (mean)", Unit::PerSec),
                Figure::new("min_sub_msgs_per_s", "messages/s, slowest subscriber", Unit::PerSec),
                Figure::new("lost", "messages lost in the measured period (sequence gaps)", Unit::Count),
            ])
        })
        .collect()
}

fn pubsub(opts: &Opts) -> Vec<Measurement> {
    let mut ms = raw_fanout(opts);
    for &flavor in &opts.flavors {
        for &n in &opts.subs {
            ms.push(
                Measurement::new(
                    format!("wharf-tokio-{flavor}-pubsub-{n}"),
                    format!("wharf-tokio pub/sub to {n} subscriber{} ({flavor}_thread)", plural(n)),
                    RoleSpec::new("wharf-tokio-pub-server").with("flavor", flavor),
                    RoleSpec::new("wharf-tokio-sub").with("flavor", flavor).with("subs", n),
                )
                .figures(pubsub_figures(n))
                .figures([
                    Figure::new("lagged", "messages reported lost (Lagged events) in the measured period", Unit::Count),
                    Figure::new("srv_dropped", "messages the broker dropped (whole run)", Unit::Count),
                ]),
            );
        }
    }
    ms
}

fn bulk_figures() -> Vec<Figure> {
    vec![
        Figure::new("mib_per_s", "payload MiB/s (request + echo)", Unit::MiBPerSec),
        Figure::new("p50_ns", "round trip p50", Unit::Nanos),
        Figure::new("p99_ns", "round trip p99", Unit::Nanos),
    ]
}

fn bandwidth(opts: &Opts) -> Vec<Measurement> {
    let size = opts.bulk;
    let what = human_size(size);
    let floor = "raw-bulk";
    let mut ms = vec![
        Measurement::new(
            floor,
            format!("raw std {what} ping-pong (floor)"),
            RoleSpec::new("raw-bulk-echo-server").with("size", size),
            RoleSpec::new("raw-bulk").with("size", size),
        )
        .figures(bulk_figures()),
    ];
    for &flavor in &opts.flavors {
        ms.push(
            Measurement::new(
                format!("wharf-tokio-{flavor}-bulk"),
                format!("wharf-tokio {what} echo ({flavor}_thread)"),
                RoleSpec::new("wharf-tokio-echo-server").with("flavor", flavor).with("size", size),
                RoleSpec::new("wharf-tokio-bulk").with("flavor", flavor).with("size", size),
            )
            .figures(bulk_figures().into_iter().map(|f| {
                let key = f.key;
                f.vs(floor, key)
            })),
        );
    }
    ms
}

/// `1 MiB`, `64 KiB`, `100 B`.
pub fn human_size(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

fn idle_figures(floor: Option<&str>) -> Vec<Figure> {
    let per = Figure::new("bytes_per_conn", "server RSS bytes per idle connection", Unit::Bytes);
    vec![
        match floor {
            Some(f) => per.vs(f, "bytes_per_conn"),
            None => per,
        },
        Figure::new("rss_before", "server RSS before (1 warm-up connection)", Unit::MiB),
        Figure::new("rss_after", "server RSS with all connections", Unit::MiB),
        Figure::new("conns_per_s", "connections completed per second", Unit::PerSec),
    ]
}

fn idle(opts: &Opts) -> Vec<Measurement> {
    let mut ms = Vec::new();
    for &n in &opts.conns {
        let mut m = Measurement::new(
            format!("raw-idle-{n}"),
            format!("raw std accept, {n} idle connections (floor)"),
            RoleSpec::new("raw-hold-server").with("conns", n),
            RoleSpec::new("raw-idle").with("conns", n),
        )
        .figures(idle_figures(None));
        m.once = true;
        ms.push(m);
        for &flavor in &opts.flavors {
            let floor = format!("tokio-echo-{flavor}-idle-{n}");
            let mut m = Measurement::new(
                &floor,
                format!("tokio echo, {n} idle connections ({flavor}_thread, floor)"),
                RoleSpec::new("tokio-echo-server").with("flavor", flavor).with("conns", n),
                RoleSpec::new("tokio-echo-idle").with("conns", n),
            )
            .figures(idle_figures(None));
            m.once = true;
            ms.push(m);
            let mut m = Measurement::new(
                format!("wharf-tokio-{flavor}-idle-{n}"),
                format!("wharf-tokio, {n} idle connections ({flavor}_thread)"),
                RoleSpec::new("wharf-tokio-echo-server").with("flavor", flavor).with("conns", n),
                RoleSpec::new("wharf-tokio-idle").with("flavor", flavor).with("conns", n),
            )
            .figures(idle_figures(Some(&floor)));
            m.once = true;
            ms.push(m);
        }
    }
    ms
}

/// The peers of this build, beside the raw floors they are divided by.
fn peers(opts: &Opts) -> Vec<Measurement> {
    if peers_built().is_empty() {
        return Vec::new();
    }
    let mut ms = raw_unary(opts);
    if cfg!(feature = "zmq") {
        ms.extend(raw_fanout(opts));
    }
    if cfg!(feature = "tarpc") {
        for &flavor in &opts.flavors {
            let server = RoleSpec::new("tarpc-echo-server").with("flavor", flavor);
            ms.push(
                Measurement::new(
                    format!("tarpc-{flavor}-unary"),
                    format!("tarpc unary, bincode ({flavor}_thread)"),
                    server.clone(),
                    RoleSpec::new("tarpc-unary").with("flavor", flavor),
                )
                .figures(latency_vs(PP)),
            );
            for &w in &opts.windows {
                ms.push(
                    Measurement::new(
                        format!("tarpc-{flavor}-inflight-{w}"),
                        format!("tarpc {w} task{} in flight ({flavor}_thread)", plural(w)),
                        server.clone(),
                        RoleSpec::new("tarpc-inflight").with("flavor", flavor).with("window", w),
                    )
                    .figures([Figure::new(
                        "calls_per_s",
                        format!("calls/s, {w} in flight"),
                        Unit::PerSec,
                    )
                    .vs(&window_floor(w), "calls_per_s")]),
                );
            }
        }
    }
    if cfg!(feature = "zmq") {
        ms.push(
            Measurement::new(
                "zmq-reqrep",
                "ZeroMQ REQ/REP over ipc://",
                RoleSpec::new("zmq-rep-server"),
                RoleSpec::new("zmq-req"),
            )
            .figures(latency_vs(PP)),
        );
        for &w in opts.windows.iter().filter(|&&w| w > 1) {
            ms.push(
                Measurement::new(
                    format!("zmq-dealer-{w}"),
                    format!("ZeroMQ DEALER/ROUTER, {w} in flight"),
                    RoleSpec::new("zmq-router-server"),
                    RoleSpec::new("zmq-dealer").with("window", w),
                )
                .figures([Figure::new("calls_per_s", format!("calls/s, {w} in flight"), Unit::PerSec)
                    .vs(&window_floor(w), "calls_per_s")]),
            );
        }
        for &n in &opts.subs {
            ms.push(
                Measurement::new(
                    format!("zmq-pubsub-{n}"),
                    format!("ZeroMQ XPUB/SUB (no drop) to {n} subscriber{}", plural(n)),
                    RoleSpec::new("zmq-xpub-server").with("subs", n),
                    RoleSpec::new("zmq-sub").with("subs", n),
                )
                .figures(pubsub_figures(n)),
            );
        }
    }
    ms
}
