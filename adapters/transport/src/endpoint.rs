//! Endpoint names: Unix socket paths, named pipes, TCP addresses, and
//! portable short names.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::TransportError;

/// `sizeof(sun_path)` on this OS; a socket path must be shorter (NUL byte).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub const SUN_PATH_LEN: usize = 108;
/// `sizeof(sun_path)` on this OS; a socket path must be shorter (NUL byte).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub const SUN_PATH_LEN: usize = 104;

/// Longest named-pipe name Windows accepts, prefix included.
pub const MAX_PIPE_NAME: usize = 256;

/// Prefix of every Windows named pipe.
pub const PIPE_PREFIX: &str = r"\\.\pipe\";

/// Where a wharf server listens and a client connects.
///
/// As a string (for configuration files and command lines):
/// `unix:/run/app.sock`, `pipe:app` (or `pipe:\\.\pipe\app`),
/// `tcp:127.0.0.1:4000`, or a bare short name such as `app`, which means
/// [`Endpoint::named`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Unix domain socket at this path.
    Unix(PathBuf),
    /// A Windows named pipe; always the full name, `\\.\pipe\...`.
    Pipe(String),
    /// A TCP address, `host:port`.
    Tcp(String),
}

impl Endpoint {
    /// A Unix domain socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Endpoint {
        Endpoint::Unix(path.into())
    }

    /// A Windows named pipe; `name` may be bare (`app`) or full (`\\.\pipe\app`).
    pub fn pipe(name: &str) -> Result<Endpoint, TransportError> {
        let full = if name.len() >= PIPE_PREFIX.len() && name[..PIPE_PREFIX.len()].eq_ignore_ascii_case(PIPE_PREFIX) {
            name.to_string()
        } else {
            format!("{PIPE_PREFIX}{name}")
        };
        let rest = &full[PIPE_PREFIX.len()..];
        if rest.is_empty() || rest.contains('\\') {
            return Err(TransportError::InvalidName {
                input: name.to_string(),
                reason: "a pipe name must be non-empty and contain no backslash after the prefix",
            });
        }
        if full.len() > MAX_PIPE_NAME {
            return Err(TransportError::InvalidName {
                input: name.to_string(),
                reason: "a pipe name may be at most 256 characters including \\\\.\\pipe\\",
            });
        }
        Ok(Endpoint::Pipe(full))
    }

    /// A TCP address (`host:port`). Servers listen on loopback only unless
    /// told otherwise.
    pub fn tcp(addr: impl Into<String>) -> Endpoint {
        Endpoint::Tcp(addr.into())
    }

    /// A portable short name (`[A-Za-z0-9._-]`, 1 to 64 characters, not
    /// starting with a dot): on Unix a socket `<name>.sock` in the current
    /// user's private wharf directory (see [`runtime_dir`]); on Windows the
    /// pipe `\\.\pipe\wharf-<user>-<name>`.
    pub fn named(name: &str) -> Result<Endpoint, TransportError> {
        validate_short_name(name)?;
        #[cfg(unix)]
        {
            Ok(Endpoint::Unix(runtime_dir()?.join(format!("{name}.sock"))))
        }
        #[cfg(windows)]
        {
            let user = std::env::var("USERNAME").unwrap_or_else(|_| "user".into());
            let user: String = user.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            Endpoint::pipe(&format!("wharf-{user}-{name}"))
        }
        #[cfg(not(any(unix, windows)))]
        {
            Err(TransportError::InvalidName { input: name.to_string(), reason: "no local transport on this OS" })
        }
    }

    /// Parses the string form (see the type documentation).
    pub fn parse(s: &str) -> Result<Endpoint, TransportError> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(TransportError::InvalidName { input: s.into(), reason: "empty path" });
            }
            return Ok(Endpoint::Unix(PathBuf::from(p)));
        }
        if let Some(p) = s.strip_prefix("pipe:") {
            return Endpoint::pipe(p);
        }
        if let Some(a) = s.strip_prefix("tcp:") {
            if !a.contains(':') {
                return Err(TransportError::InvalidName { input: s.into(), reason: "expected tcp:HOST:PORT" });
            }
            return Ok(Endpoint::Tcp(a.to_string()));
        }
        if let Some(n) = s.strip_prefix("name:") {
            return Endpoint::named(n);
        }
        if s.contains('/') {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        Endpoint::named(s)
    }

    /// Checks what can be checked without touching the OS: path length for
    /// Unix sockets, pipe name rules.
    pub fn validate(&self) -> Result<(), TransportError> {
        match self {
            Endpoint::Unix(p) => check_unix_path(p),
            Endpoint::Pipe(name) => Endpoint::pipe(name).map(|_| ()),
            Endpoint::Tcp(_) => Ok(()),
        }
    }

    /// The error an adapter gives for an endpoint it cannot use on this OS
    /// (Unix sockets off Unix, named pipes off Windows).
    pub fn unsupported(&self) -> TransportError {
        let (input, reason) = match self {
            Endpoint::Unix(path) => {
                (path.display().to_string(), "Unix sockets are not supported by this adapter on this OS")
            }
            Endpoint::Pipe(name) => (name.clone(), "named pipes exist only on Windows"),
            Endpoint::Tcp(addr) => (addr.clone(), "TCP is not supported by this adapter"),
        };
        TransportError::InvalidName { input, reason }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Pipe(n) => write!(f, "pipe:{n}"),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl FromStr for Endpoint {
    type Err = TransportError;
    fn from_str(s: &str) -> Result<Endpoint, TransportError> {
        Endpoint::parse(s)
    }
}

fn validate_short_name(name: &str) -> Result<(), TransportError> {
    let bad = |reason| Err(TransportError::InvalidName { input: name.to_string(), reason });
    if name.is_empty() || name.len() > 64 {
        return bad("a short name has 1 to 64 characters");
    }
    if name.starts_with('.') {
        return bad("a short name may not start with a dot");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return bad("a short name may contain only ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Refuses a Unix socket path that does not fit `sockaddr_un` (instead of
/// letting the OS truncate it or answer a bare `EINVAL`), and names of
/// the Linux abstract namespace: a path with a NUL byte (a leading NUL is
/// how an abstract name is written) or starting with `@` (how tools show
/// one). Abstract sockets have no file, hence no mode and no directory to
/// protect them: anything in the same network namespace can connect, so
/// wharf does not offer them (write `./@name` for a file really named so).
pub fn check_unix_path(path: &Path) -> Result<(), TransportError> {
    let bytes = path.as_os_str().as_encoded_bytes();
    let len = bytes.len();
    if len == 0 {
        return Err(TransportError::InvalidName { input: String::new(), reason: "empty socket path" });
    }
    if bytes.contains(&0) || bytes[0] == b'@' {
        return Err(TransportError::InvalidName {
            input: path.display().to_string(),
            reason: "abstract-namespace sockets are not supported (no file permissions protect them); \
                     use a socket file in a private directory",
        });
    }
    if len >= SUN_PATH_LEN {
        return Err(TransportError::PathTooLong { path: path.to_path_buf(), len, limit: SUN_PATH_LEN });
    }
    Ok(())
}

/// The current user's private directory for wharf sockets (it is not
/// created here; binding creates it with mode 0700):
/// `$XDG_RUNTIME_DIR/wharf` when that variable names an absolute path,
/// otherwise `/tmp/wharf-<uid>`. On macOS `$TMPDIR/wharf` when short
/// enough, else `/tmp/wharf-<uid>`.
#[cfg(unix)]
pub fn runtime_dir() -> Result<PathBuf, TransportError> {
    let uid = rustix::process::getuid().as_raw();
    let fallback = PathBuf::from(format!("/tmp/wharf-{uid}"));
    let var = if cfg!(target_os = "macos") { "TMPDIR" } else { "XDG_RUNTIME_DIR" };
    let dir = match std::env::var_os(var) {
        Some(v) if Path::new(&v).is_absolute() => PathBuf::from(v).join("wharf"),
        _ => fallback.clone(),
    };
    // Leave room for "/<64-char name>.sock".
    if dir.as_os_str().len() + 71 >= SUN_PATH_LEN { Ok(fallback) } else { Ok(dir) }
}
