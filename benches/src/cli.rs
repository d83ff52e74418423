//! # wharf-bench
//!
//! The comparison harness: measures wharf against the floor (raw std Unix
//! sockets) with client and server in separate processes, several rounds
//! interleaved, under each CPU pinning, and prints one markdown report.
//!
//! ```sh
//! cargo run --release -p wharf-bench -- all
//! cargo run --release -p wharf-bench -- help
//! ```
//!
//! The binary has two faces. Run by a person it is the *orchestrator*: it
//! parses the options, builds the list of measurements of the chosen
//! suites ([`suite`]), and for every round, pinning and measurement starts
//! a server process and a client process — both this same executable,
//! re-executed as `wharf-bench role NAME key=value...` ([`role`]) — collects
//! the figures the client prints and finally renders the report
//! ([`report`]).
//!
//! Adding a measurement: write its client (and, if new, its server) as a
//! role function, register the role name in [`role::run`], and describe
//! the measurement (roles, figures, floors) in a suite in [`suite`]. A new
//! suite is a new subcommand.

#[cfg(unix)]
mod affinity;
#[cfg(unix)]
mod drive;
#[cfg(unix)]
mod idle;
#[cfg(unix)]
mod orchestrate;
#[cfg(all(unix, any(feature = "tarpc", feature = "zmq")))]
mod peers;
#[cfg(unix)]
mod pubsub;
#[cfg(unix)]
mod raw;
#[cfg(unix)]
mod report;
#[cfg(unix)]
mod role;
#[cfg(unix)]
mod stats;
#[cfg(unix)]
mod suite;
#[cfg(unix)]
mod sys;
#[cfg(unix)]
mod tokio_echo;
#[cfg(unix)]
mod wharf_mio;
#[cfg(unix)]
mod wharf_tokio;

/// The error type of every role and of the orchestrator.
#[cfg(unix)]
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A result with [`BoxError`].
#[cfg(unix)]
pub type Result<T> = std::result::Result<T, BoxError>;

#[cfg(unix)]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = if args.first().map(String::as_str) == Some("role") {
        role::main(&args[1..])
    } else {
        orchestrate::main(&args)
    };
    if let Err(e) = outcome {
        eprintln!("wharf-bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(unix))]
fn main() {
    eprintln!("wharf-bench measures over Unix sockets and runs on Unix systems only");
    std::process::exit(1);
}
