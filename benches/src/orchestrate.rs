//! The orchestrator: options, the interleaved rounds, one server and one
//! client process per run, and the collection of their figures.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::{self, Figures, Grid, Run};
use crate::role::RoleSpec;
use crate::stats::Timing;
use crate::suite::{self, Measurement, Opts, SUITES};
use crate::wharf_tokio::Flavor;
use crate::{Result, affinity};

/// Where the two processes of a run may execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pinning {
    /// Both processes on this one CPU.
    Same(usize),
    /// Client and server each on its own CPU.
    Split {
        /// The client's CPU.
        client: usize,
        /// The server's CPU.
        server: usize,
    },
    /// Wherever the scheduler puts them.
    None,
}

impl Pinning {
    /// A heading for the report.
    pub fn label(self) -> String {
        match self {
            Pinning::Same(c) => format!("both processes on one core (cpu {c})"),
            Pinning::Split { client, server } => {
                format!("processes on different cores (client cpu {client}, server cpu {server})")
            }
            Pinning::None => "unpinned".into(),
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Pinning::Same(_) => "same",
            Pinning::Split { .. } => "split",
            Pinning::None => "none",
        }
    }

    fn client(self) -> Option<usize> {
        match self {
            Pinning::Same(c) | Pinning::Split { client: c, .. } => Some(c),
            Pinning::None => None,
        }
    }

    fn server(self) -> Option<usize> {
        match self {
            Pinning::Same(c) | Pinning::Split { server: c, .. } => Some(c),
            Pinning::None => None,
        }
    }
}

/// The orchestrator's options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Suites to run, in order.
    pub suites: Vec<&'static str>,
    /// Rounds; each round runs every measurement under every pinning.
    pub rounds: usize,
    /// Warm-up and measured time of each run.
    pub timing: Timing,
    /// Pinnings, in the order run within a round.
    pub pins: Vec<Pinning>,
    /// What the suites build their measurements from.
    pub opts: Opts,
    /// Also write the report here.
    pub out: Option<PathBuf>,
}

const HELP: &str = "\
wharf-bench: wharf against the raw-socket floor, client and server in separate processes

usage: wharf-bench [SUBCOMMAND...] [OPTIONS]

subcommands (several may be given; none means all):
  all               every suite below
{suites}  list              list the measurements the options select, and exit
  help              this text

options:
  --rounds N        rounds, interleaved: each round runs every measurement under
                    every pinning, so slow drift hits all figures alike (default 5)
  --measure SECS    measured time of each run (default 1)
  --warmup SECS     time each run spends before measuring (default 0.3)
  --quick           one quick round to see that everything runs: --rounds 1
                    --warmup 0.1 --measure 0.3 (options given explicitly win)
  --pin WHICH       same | split | both | none | all (default both = same and split):
                    same = both processes on one core, split = on different cores,
                    none = unpinned; pinning is sched_setaffinity(2) in each process
  --cpus A[,B]      CPUs to use: same-core runs use A, split runs put the client on A
                    and the server on B (default: the first two this process may use)
  --window LIST     calls in flight for the throughput figures, comma-separated
                    (default 1,16,64)
  --flavor LIST     tokio scheduler of the tokio-based processes (wharf, the tokio
                    echo, tarpc), comma-separated: current (default) and/or multi
  --subs LIST       subscriber counts of the pub/sub measurements (default 1,4)
  --bulk BYTES      payload of the bandwidth measurements (default 1048576 = 1 MiB)
  --conns LIST      connection counts of the idle-memory measurements, run under
                    the first pinning only (default 1000,10000)
  --out FILE        also write the report to FILE

peers built in: {peers}

The report (markdown) goes to standard output, progress to standard error.
Build with --release: cargo run --release -p wharf-bench -- all
";

fn help() -> String {
    let suites: String = SUITES.iter().map(|s| format!("  {:<18}{}\n", s.name, s.about)).collect();
    let peers = suite::peers_built();
    let peers = if peers.is_empty() {
        "none (build with --features tarpc,zmq; zmq needs libzmq3-dev)".to_string()
    } else {
        peers.join(", ")
    };
    HELP.replace("{suites}", &suites).replace("{peers}", &peers)
}

fn parse(args: &[String]) -> Result<Option<(Options, bool)>> {
    let mut suites = Vec::new();
    let mut list = false;
    let mut quick = false;
    let mut rounds: Option<usize> = None;
    let mut measure: Option<f64> = None;
    let mut warmup: Option<f64> = None;
    let mut pin = "both".to_string();
    let mut cpus: Option<Vec<usize>> = None;
    let mut windows = vec![1usize, 16, 64];
    let mut flavors = vec![Flavor::Current];
    let mut subs = vec![1usize, 4];
    let mut conns = vec![1000usize, 10_000];
    let mut bulk = 1usize << 20;
    let mut out = None;

    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "help" | "-h" | "--help" => {
                print!("{}", help());
                return Ok(None);
            }
            "all" => suites.extend(SUITES.iter().map(|s| s.name)),
            "list" => list = true,
            "--quick" => quick = true,
            "--rounds" => rounds = Some(value(a)?.parse()?),
            "--measure" => measure = Some(value(a)?.parse()?),
            "--warmup" => warmup = Some(value(a)?.parse()?),
            "--pin" => pin = value(a)?,
            "--cpus" => cpus = Some(list_of(&value(a)?)?),
            "--window" => windows = list_of(&value(a)?)?,
            "--flavor" => {
                flavors = value(a)?.split(',').map(|f| f.trim().parse()).collect::<std::result::Result<_, _>>()?
            }
            "--subs" => subs = list_of(&value(a)?)?,
            "--conns" => conns = list_of(&value(a)?)?,
            "--bulk" => bulk = value(a)?.parse()?,
            "--out" => out = Some(PathBuf::from(value(a)?)),
            "peers" if suite::peers_built().is_empty() => {
                return Err("`peers` needs a build with its features: \
                            cargo run --release -p wharf-bench --features tarpc,zmq -- peers \
                            (zmq needs libzmq3-dev: apt-get install libzmq3-dev pkg-config)"
                    .into());
            }
            name => match SUITES.iter().find(|s| s.name == name) {
                Some(s) => suites.push(s.name),
                None => return Err(format!("unknown argument {name:?}; try `help`").into()),
            },
        }
    }
    if suites.is_empty() {
        suites.extend(SUITES.iter().map(|s| s.name));
    }
    let mut seen = std::collections::HashSet::new();
    suites.retain(|s| seen.insert(*s));
    if suite::peers_built().is_empty() {
        // `all` without the peers' features: nothing to run there.
        suites.retain(|s| *s != "peers");
    }
    let rounds = rounds.unwrap_or(if quick { 1 } else { 5 });
    let measure = measure.unwrap_or(if quick { 0.3 } else { 1.0 });
    let warmup = warmup.unwrap_or(if quick { 0.1 } else { 0.3 });
    let sane = rounds > 0 && measure.is_finite() && measure > 0.0 && warmup.is_finite() && warmup >= 0.0;
    if !sane {
        return Err("--rounds and --measure must be positive, --warmup not negative".into());
    }
    if windows.contains(&0) || subs.contains(&0) || conns.contains(&0) || bulk == 0 {
        return Err("--window, --subs, --conns and --bulk values must be positive".into());
    }

    let cpus = match cpus {
        Some(c) => c,
        None => affinity::allowed_cpus()?,
    };
    let first = cpus.first().copied();
    let second = cpus.get(1).copied();
    let same = || first.map(Pinning::Same).ok_or("no CPU known to pin to (give --cpus)");
    let split = || match (first, second) {
        (Some(client), Some(server)) => Ok(Pinning::Split { client, server }),
        _ => Err("pinning to different cores needs two CPUs (give --cpus A,B)"),
    };
    let pins = match pin.as_str() {
        "same" => vec![same()?],
        "split" => vec![split()?],
        "none" => vec![Pinning::None],
        "both" => match split() {
            Ok(s) => vec![same()?, s],
            Err(e) => {
                eprintln!("wharf-bench: {e}; measuring on one core only");
                vec![same()?]
            }
        },
        "all" => vec![same()?, split()?, Pinning::None],
        other => return Err(format!("unknown --pin {other:?} (same, split, both, none, all)").into()),
    };

    let timing = Timing { warmup: Duration::from_secs_f64(warmup), measure: Duration::from_secs_f64(measure) };
    let opts = Opts { windows, flavors, subs, conns, bulk };
    Ok(Some((Options { suites, rounds, timing, pins, opts, out }, list)))
}

fn list_of(s: &str) -> Result<Vec<usize>> {
    s.split(',').map(|x| x.trim().parse::<usize>().map_err(|e| format!("{x:?}: {e}").into())).collect()
}

/// Entry point of the orchestrator.
pub fn main(args: &[String]) -> Result<()> {
    let Some((options, list)) = parse(args)? else { return Ok(()) };
    // Suites share floors: an id that occurs twice is measured once.
    let mut ids = std::collections::HashSet::new();
    let measurements: Vec<Measurement> = options
        .suites
        .iter()
        .flat_map(|name| SUITES.iter().filter(move |s| s.name == *name))
        .flat_map(|s| (s.build)(&options.opts))
        .filter(|m| ids.insert(m.id.clone()))
        .collect();
    if list {
        for m in &measurements {
            println!("{:<36} {}{}", m.id, m.title, if m.once { " [first pinning only]" } else { "" });
        }
        return Ok(());
    }
    if measurements.is_empty() {
        return Err("nothing to measure".into());
    }
    if cfg!(debug_assertions) {
        eprintln!("wharf-bench: this is a debug build; figures are meaningless (use cargo run --release)");
    }

    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("wharf-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let per_run = options.timing.warmup + options.timing.measure;
    let timed = measurements.iter().filter(|m| !m.once).count();
    let once = measurements.len() - timed;
    let total = options.rounds * (options.pins.len() * timed + once);
    // Idle runs take their own time: about 0.5 s plus a second per 2,500
    // connections (connect, settle, tear down).
    let idle_secs: f64 = measurements.iter().filter(|m| m.once).map(|m| 1.0 + conns_of(m) as f64 / 2500.0).sum::<f64>();
    eprintln!(
        "wharf-bench: {} runs ({} rounds × ({} pinnings × {} measurements + {} under the first pinning only)), about {:.0} s",
        total,
        options.rounds,
        options.pins.len(),
        timed,
        once,
        options.rounds as f64 * (options.pins.len() as f64 * timed as f64 * (per_run.as_secs_f64() + 0.3) + idle_secs)
    );

    let mut results = Grid::new(options.pins.len(), measurements.len(), options.rounds);
    let load_before = report::loadavg();
    let started = Instant::now();
    let mut seq = 0usize;
    for round in 0..options.rounds {
        for (pi, &pin) in options.pins.iter().enumerate() {
            // Rotate the order each round so no measurement always runs
            // first (or right after a particular other one).
            for k in 0..measurements.len() {
                let mi = (k + round) % measurements.len();
                let m = &measurements[mi];
                if m.once && pi > 0 {
                    continue;
                }
                seq += 1;
                let socket = dir.join(format!("{seq}-{}-{}.sock", pin.tag(), m.id));
                match run_one(&exe, &socket, m, pin, options.timing) {
                    Ok(figures) => {
                        eprintln!(
                            "[{seq}/{total}] round {} {:<5} {:<32} {}",
                            round + 1,
                            pin.tag(),
                            m.id,
                            report::brief(m, &figures)
                        );
                        results.put(pi, mi, round, figures);
                    }
                    Err(e) => eprintln!("[{seq}/{total}] round {} {} {}: FAILED: {e}", round + 1, pin.tag(), m.id),
                }
                let _ = std::fs::remove_file(&socket);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    let run = Run {
        options: &options,
        measurements: &measurements,
        results,
        elapsed: started.elapsed(),
        load: [load_before, report::loadavg()],
    };
    let text = report::render(&run);
    print!("{text}");
    if let Some(path) = &options.out {
        std::fs::write(path, &text)?;
    }
    Ok(())
}

/// Kills and reaps a child process that is still running when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn role_command(exe: &Path, role: &RoleSpec, socket: &Path, cpu: Option<usize>) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("role").arg(role.name).arg(format!("socket={}", socket.display()));
    if let Some(cpu) = cpu {
        cmd.arg(format!("pin={cpu}"));
    }
    for (k, v) in &role.params {
        cmd.arg(format!("{k}={v}"));
    }
    cmd
}

/// Waits for `child` until `deadline`; kills it past that.
fn wait_until(child: &mut Child, deadline: Instant, what: &str) -> Result<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not finish in time; killed").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One run: start the server, wait for `ready`, run the client to the end,
/// parse its figures, stop the server.
fn run_one(exe: &Path, socket: &Path, m: &Measurement, pin: Pinning, timing: Timing) -> Result<Figures> {
    let mut server = Reaped(
        role_command(exe, &m.server, socket, pin.server())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let mut ready = String::new();
    let mut server_out = BufReader::new(server.0.stdout.take().ok_or("server stdout")?);
    server_out.read_line(&mut ready)?;
    if ready.trim() != "ready" {
        return Err(format!("server {} did not start (said {:?})", m.server.name, ready.trim()).into());
    }

    let mut client = Reaped(
        role_command(exe, &m.client, socket, pin.client())
            .arg(format!("server_pid={}", server.0.id()))
            .arg(format!("warmup={}", timing.warmup.as_secs_f64()))
            .arg(format!("measure={}", timing.measure.as_secs_f64()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let deadline = Instant::now() + timing.warmup + timing.measure + Duration::from_secs(60);
    let status = wait_until(&mut client.0, deadline, "client")?;
    let mut out = String::new();
    if let Some(mut o) = client.0.stdout.take() {
        o.read_to_string(&mut out)?;
    }
    if !status.success() {
        return Err(format!("client {} failed: {status}", m.client.name).into());
    }

    // Closing its standard input ends the server, which may print figures
    // of its own first.
    drop(server.0.stdin.take());
    wait_until(&mut server.0, Instant::now() + Duration::from_secs(10), "server")?;
    server_out.read_to_string(&mut out)?;

    let mut figures = Figures::new();
    for line in out.lines() {
        let mut words = line.split_whitespace();
        if let (Some("metric"), Some(k), Some(v)) = (words.next(), words.next(), words.next()) {
            figures.insert(k.to_string(), v.parse::<f64>()?);
        }
    }
    for f in &m.figures {
        if !figures.contains_key(f.key) {
            return Err(format!("{} did not report {}", m.client.name, f.key).into());
        }
    }
    Ok(figures)
}

/// The `conns=` parameter of a measurement's client (0 without one).
fn conns_of(m: &Measurement) -> usize {
    m.client.params.iter().find(|(k, _)| *k == "conns").and_then(|(_, v)| v.parse().ok()).unwrap_or(0)
}
