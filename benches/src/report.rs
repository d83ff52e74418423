//! The markdown report: conditions, then one table per pinning with each
//! figure's median across rounds, its spread, and its ratio to the floor
//! measured in the same round under the same pinning.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::orchestrate::Options;
use crate::stats::Spread;
use crate::suite::{Figure, Measurement, Unit};

/// The figures of one run, by metric key.
pub type Figures = HashMap<String, f64>;

/// Figures by pinning, measurement and round (indices into the run's lists).
pub struct Grid {
    measurements: usize,
    rounds: usize,
    cells: Vec<Option<Figures>>,
}

impl Grid {
    /// An empty grid.
    pub fn new(pins: usize, measurements: usize, rounds: usize) -> Grid {
        Grid { measurements, rounds, cells: vec![None; pins * measurements * rounds] }
    }

    fn index(&self, pin: usize, m: usize, round: usize) -> usize {
        (pin * self.measurements + m) * self.rounds + round
    }

    /// Records a run.
    pub fn put(&mut self, pin: usize, m: usize, round: usize, figures: Figures) {
        let i = self.index(pin, m, round);
        self.cells[i] = Some(figures);
    }

    /// One figure of every round (NaN where the run failed).
    pub fn values(&self, pin: usize, m: usize, key: &str) -> Vec<f64> {
        (0..self.rounds)
            .map(|r| self.cells[self.index(pin, m, r)].as_ref().and_then(|f| f.get(key).copied()).unwrap_or(f64::NAN))
            .collect()
    }
}

/// Everything one invocation measured.
pub struct Run<'a> {
    /// The options it ran with.
    pub options: &'a Options,
    /// The measurements, in table order.
    pub measurements: &'a [Measurement],
    /// Every run's figures.
    pub results: Grid,
    /// Wall time of all runs.
    pub elapsed: Duration,
    /// `/proc/loadavg` before and after the runs.
    pub load: [Option<String>; 2],
}

/// A figure's number, without its unit.
fn number(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Nanos => {
            let us = v / 1000.0;
            if us < 10.0 {
                format!("{us:.2}")
            } else if us < 1000.0 {
                format!("{us:.1}")
            } else {
                thousands(us.round() as u64)
            }
        }
        Unit::PerSec | Unit::Count => thousands(v.round() as u64),
        Unit::MiBPerSec => {
            if v < 100.0 {
                format!("{v:.1}")
            } else {
                thousands(v.round() as u64)
            }
        }
        Unit::Bytes => {
            if v < 0.0 {
                format!("−{}", thousands((-v).round() as u64))
            } else {
                thousands(v.round() as u64)
            }
        }
        Unit::MiB => format!("{:.1}", v / (1024.0 * 1024.0)),
    }
}

fn suffix(unit: Unit) -> &'static str {
    match unit {
        Unit::Nanos => " µs",
        Unit::PerSec | Unit::Count => "",
        Unit::MiBPerSec => " MiB/s",
        Unit::Bytes => " B",
        Unit::MiB => " MiB",
    }
}

/// A figure with its unit.
fn show(unit: Unit, v: f64) -> String {
    format!("{}{}", number(unit, v), suffix(unit))
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line of progress for a finished run.
pub fn brief(m: &Measurement, figures: &Figures) -> String {
    let mut seen = std::collections::HashSet::new();
    m.figures
        .iter()
        .filter(|f| seen.insert(f.key))
        .filter_map(|f| figures.get(f.key).map(|v| format!("{} {}", f.key.trim_end_matches("_ns"), show(f.unit, *v))))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report.
pub fn render(run: &Run<'_>) -> String {
    let o = run.options;
    let mut s = String::new();
    let _ = writeln!(s, "## wharf-bench: {}\n", o.suites.join(", "));
    let _ = writeln!(s, "Conditions:\n");
    for (k, v) in conditions(run) {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(
        s,
        "\nEach figure is the median of the rounds; *spread* is the smallest–largest round. \
         *× floor* is the figure divided by the floor named in the last column, computed per round \
         (same round, same pinning) and summarised the same way: for latency and memory above 1 \
         is worse than the floor, for calls/s, messages/s and MiB/s below 1 is worse. *n* is the \
         number of rounds that produced the figure. Measurements marked *first pinning only* \
         (idle memory) run under the first pinning only and appear in its table.\n"
    );

    let index: HashMap<&str, usize> = run.measurements.iter().enumerate().map(|(i, m)| (m.id.as_str(), i)).collect();
    for (pi, pin) in o.pins.iter().enumerate() {
        if run.measurements.iter().all(|m| m.once && pi > 0) {
            continue;
        }
        let _ = writeln!(s, "### {}\n", pin.label());
        let _ =
            writeln!(s, "| measurement | figure | median | spread (min–max) | × floor | × floor spread | n | floor |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---|");
        for (mi, m) in run.measurements.iter().enumerate() {
            if m.once && pi > 0 {
                continue;
            }
            for f in &m.figures {
                let values = run.results.values(pi, mi, f.key);
                let (median, spread, n) = match Spread::of(&values) {
                    Some(sp) => (
                        show(f.unit, sp.median),
                        format!("{} – {}{}", number(f.unit, sp.min), number(f.unit, sp.max), suffix(f.unit)),
                        sp.n.to_string(),
                    ),
                    None => ("failed".into(), "".into(), "0".into()),
                };
                let (ratio, ratio_spread, floor) = ratio_cells(run, pi, f, &values, &index);
                let _ = writeln!(
                    s,
                    "| {} | {} | {median} | {spread} | {ratio} | {ratio_spread} | {n} | {floor} |",
                    m.title, f.label
                );
            }
        }
        s.push('\n');
    }
    s
}

fn ratio_cells(
    run: &Run<'_>,
    pi: usize,
    f: &Figure,
    values: &[f64],
    index: &HashMap<&str, usize>,
) -> (String, String, String) {
    let Some((floor_id, floor_key)) = &f.floor else { return ("—".into(), "".into(), "".into()) };
    let Some(&fi) = index.get(floor_id.as_str()) else {
        return ("—".into(), "".into(), format!("{floor_id} (not in this run)"));
    };
    let floor_m = &run.measurements[fi];
    let floor_label = floor_m.figures.iter().find(|x| x.key == *floor_key).map_or(*floor_key, |x| x.label.as_str());
    let floor_name = format!("{}: {}", floor_m.title.trim_end_matches(" (floor)"), floor_label);
    let ratios: Vec<f64> =
        values.iter().zip(run.results.values(pi, fi, floor_key)).map(|(v, floor)| v / floor).collect();
    match Spread::of(&ratios) {
        Some(sp) => (format!("{:.2}", sp.median), format!("{:.2} – {:.2}", sp.min, sp.max), floor_name),
        None => ("—".into(), "".into(), floor_name),
    }
}

fn conditions(run: &Run<'_>) -> Vec<(&'static str, String)> {
    let o = run.options;
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    let cpu = read("/proc/cpuinfo")
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let ncpu = std::thread::available_parallelism().map(|n| n.get().to_string()).unwrap_or_else(|_| "?".into());
    let mut v = vec![
        ("CPU", format!("{cpu}, {ncpu} CPUs available")),
        ("kernel", read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into())),
        (
            "clock source",
            read("/sys/devices/system/clocksource/clocksource0/current_clocksource")
                .unwrap_or_else(|| "unknown".into()),
        ),
    ];
    if let [Some(before), Some(after)] = &run.load {
        v.push((
            "load average (1, 5, 15 min; other processes compete for the CPUs)",
            format!("{before} before, {after} after"),
        ));
    }
    if let Some(g) = read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") {
        v.push(("CPU frequency governor", g));
    }
    v.push(("rustc", env!("WHARF_BENCH_RUSTC").to_string()));
    v.push((
        "build",
        if cfg!(debug_assertions) { "debug (figures meaningless)".into() } else { "release".to_string() },
    ));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    v.push((
        "wharf",
        format!("{}{}", env!("CARGO_PKG_VERSION"), git(&root).map(|g| format!(", {g}")).unwrap_or_default()),
    ));
    if let Some(t) = locked_version(&root, "tokio") {
        v.push(("tokio", t));
    }
    v.push((
        "pinning",
        format!(
            "{}; by sched_setaffinity(2) (libc) in each process before it starts a thread",
            o.pins.iter().map(|p| p.label()).collect::<Vec<_>>().join("; ")
        ),
    ));
    v.push((
        "tokio scheduler of the tokio-based processes (wharf, tokio echo, tarpc)",
        format!(
            "{} (client and server alike)",
            o.opts.flavors.iter().map(|f| format!("{f}_thread")).collect::<Vec<_>>().join(", ")
        ),
    ));
    v.push((
        "rounds",
        format!(
            "{} round{}, interleaved (each round runs every measurement under every pinning, order rotated per round); \
             each run {:.2} s warm-up + {:.2} s measured, fresh server and client processes; all runs took {:.0} s",
            o.rounds,
            if o.rounds == 1 { "" } else { "s" },
            o.timing.warmup.as_secs_f64(),
            o.timing.measure.as_secs_f64(),
            run.elapsed.as_secs_f64()
        ),
    ));
    v.push((
        "payload",
        format!(
            "unary and pub/sub: 64 bytes (raw std: the whole message; tokio echo and raw fan-out: after a \
             4-byte length; wharf: the call's raw payload or the published bytes; peers: see the README); \
             bandwidth: {} echoed",
            crate::suite::human_size(o.opts.bulk)
        ),
    ));
    let peers = crate::suite::peers_built();
    v.push(("peers built in", if peers.is_empty() { "none".into() } else { peers.join(", ") }));
    v
}

/// `git describe`-like: short commit, and whether the tree has changes.
fn git(root: &Path) -> Option<String> {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "--short", "HEAD"])?;
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(format!("commit {commit}{}", if dirty { " with uncommitted changes" } else { "" }))
}

/// A package's version from the workspace's Cargo.lock.
fn locked_version(root: &Path, name: &str) -> Option<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == format!("name = \"{name}\"") {
            return lines.next()?.trim().strip_prefix("version = ")?.trim_matches('"').to_string().into();
        }
    }
    None
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}
