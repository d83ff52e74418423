//! Which local peers a server lets in (and which servers a client trusts),
//! judged on the kernel's credentials at accept (or connect) time, before
//! a single frame is read.

use crate::PeerIdentity;
use crate::endpoint::Endpoint;
use crate::error::TransportError;
use crate::sid::Sid;

/// Which local peers a server accepts, decided from the identity the
/// kernel reports at accept time ([`PeerIdentity`]), before the
/// handshake: a refused peer is closed without a frame being read or
/// written.
///
/// - **Unix sockets** are judged by uid (from `SO_PEERCRED` or
///   `getpeereid`): by default **the server's own effective uid, or root**
///   (uid 0).
/// - **Windows named pipes** are judged by the user SID of the peer
///   process's token (read once at accept time): by default **the
///   server's own user SID, or LocalSystem** (`S-1-5-18`), the same rule
///   in Windows terms.
///
/// Wider or narrower access is opt-in:
///
/// ```
/// use wharf_transport::{PeerPolicy, Sid};
///
/// // The default, plus one more user and everyone whose primary group is 1001.
/// let policy = PeerPolicy::default().allow_uid(1000).allow_gid(1001);
/// // Only uid 1000 (not even the server's own user or root).
/// let strict = PeerPolicy::allow_list().allow_uid(1000);
/// // On a pipe: the default plus one more account.
/// let pipe = PeerPolicy::default().allow_sid("S-1-5-21-1-2-3-1001".parse::<Sid>().unwrap());
/// // Every local user that can reach the socket file or open the pipe
/// // (deliberately loose).
/// let open = PeerPolicy::any();
/// # let _ = (policy, strict, pipe, open);
/// ```
///
/// The policy and the socket file's mode (or the pipe's security
/// descriptor) are two independent layers: a peer must be able to reach
/// the endpoint *and* pass the policy. Loosening one leaves the other in
/// force; to let another user in, loosen both.
///
/// - Groups are the peer's **primary** gid as the kernel reports it;
///   supplementary groups are not consulted. uids and gids apply to Unix
///   sockets only, SIDs to named pipes only.
/// - A peer whose identity could not be read (no uid on a Unix socket, no
///   SID on a pipe: the process is gone, or its token may not be queried)
///   is refused unless the policy is [`any`](Self::any): a failed lookup
///   never counts as a match, let alone as a privileged one.
/// - TCP peers have no uid: the policy does not apply to TCP endpoints
///   (they are loopback-only by default; authenticate TCP peers with the
///   auth hook).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPolicy {
    any: bool,
    same_user: bool,
    root: bool,
    uids: Vec<u32>,
    gids: Vec<u32>,
    sids: Vec<Sid>,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        PeerPolicy::same_user_or_root()
    }
}

impl PeerPolicy {
    /// The default: the server's own user (effective uid; on a pipe, its
    /// token's user SID), or root (uid 0; on a pipe, LocalSystem).
    pub fn same_user_or_root() -> PeerPolicy {
        PeerPolicy { same_user: true, root: true, ..PeerPolicy::allow_list() }
    }

    /// Nobody yet: add who may connect with [`allow_uid`](Self::allow_uid),
    /// [`allow_gid`](Self::allow_gid), [`allow_sid`](Self::allow_sid),
    /// [`allow_same_user`](Self::allow_same_user) and
    /// [`allow_root`](Self::allow_root).
    pub fn allow_list() -> PeerPolicy {
        PeerPolicy { any: false, same_user: false, root: false, uids: Vec::new(), gids: Vec::new(), sids: Vec::new() }
    }

    /// Every peer, whatever its credentials (the file mode and directory,
    /// or the pipe's security descriptor, are then the only OS-level
    /// protection). Deliberately loose: use it only together with an auth
    /// hook or an endpoint only trusted users can reach.
    pub fn any() -> PeerPolicy {
        PeerPolicy { any: true, ..PeerPolicy::allow_list() }
    }

    /// Also accept Unix-socket peers running as `uid`.
    pub fn allow_uid(mut self, uid: u32) -> PeerPolicy {
        if !self.uids.contains(&uid) {
            self.uids.push(uid);
        }
        self
    }

    /// Also accept Unix-socket peers whose primary group is `gid`.
    pub fn allow_gid(mut self, gid: u32) -> PeerPolicy {
        if !self.gids.contains(&gid) {
            self.gids.push(gid);
        }
        self
    }

    /// Also accept named-pipe peers whose token user is `sid`.
    pub fn allow_sid(mut self, sid: Sid) -> PeerPolicy {
        if !self.sids.contains(&sid) {
            self.sids.push(sid);
        }
        self
    }

    /// Also accept peers running as the server's own user (its effective
    /// uid; on a pipe, its token's user SID).
    pub fn allow_same_user(mut self) -> PeerPolicy {
        self.same_user = true;
        self
    }

    /// Also accept root (uid 0; on a pipe, LocalSystem, `S-1-5-18`).
    pub fn allow_root(mut self) -> PeerPolicy {
        self.root = true;
        self
    }

    /// Whether this policy lets everyone in ([`any`](Self::any)).
    pub fn is_any(&self) -> bool {
        self.any
    }

    /// Decides on a peer of a Unix socket whose server runs as `own_uid`:
    /// `true` if it may connect. A peer without a uid is refused unless
    /// the policy is [`any`](Self::any).
    pub fn allows(&self, peer: &PeerIdentity, own_uid: u32) -> bool {
        if self.any {
            return true;
        }
        let Some(uid) = peer.uid else { return false };
        (self.same_user && uid == own_uid)
            || (self.root && uid == 0)
            || self.uids.contains(&uid)
            || peer.gid.is_some_and(|g| self.gids.contains(&g))
    }

    /// Decides on a peer of a named pipe whose server runs as `own_sid`
    /// (`None`: this process's own SID could not be read, so "the same
    /// user" matches nobody): `true` if it may connect. A peer without a
    /// SID is refused unless the policy is [`any`](Self::any).
    pub fn allows_sid(&self, peer: &PeerIdentity, own_sid: Option<&Sid>) -> bool {
        if self.any {
            return true;
        }
        let Some(sid) = peer.sid.as_ref() else { return false };
        (self.same_user && own_sid == Some(sid)) || (self.root && *sid == Sid::LOCAL_SYSTEM) || self.sids.contains(sid)
    }

    /// Whether `peer` passes on `endpoint`, judged against this process's
    /// own identity: `None` where the policy does not apply (TCP).
    fn judge(&self, endpoint: &Endpoint, peer: &PeerIdentity) -> Option<bool> {
        match endpoint {
            #[cfg(unix)]
            Endpoint::Unix(_) => Some(self.allows(peer, rustix::process::geteuid().as_raw())),
            #[cfg(not(unix))]
            Endpoint::Unix(_) => Some(self.any),
            Endpoint::Pipe(_) => Some(self.allows_sid(peer, own_sid().as_ref())),
            Endpoint::Tcp(_) => None,
        }
    }

    /// Checks a peer accepted on `endpoint`, by a server running as this
    /// process's user. Unix sockets are judged by uid, named pipes by
    /// SID; TCP is not judged (see the type documentation). A refusal is
    /// [`TransportError::PeerRefused`] (Unix) or
    /// [`TransportError::PipePeerRefused`] (pipes), naming the endpoint
    /// and the peer's identity.
    pub fn check(&self, endpoint: &Endpoint, peer: &PeerIdentity) -> Result<(), TransportError> {
        match self.judge(endpoint, peer) {
            None | Some(true) => Ok(()),
            Some(false) if matches!(endpoint, Endpoint::Pipe(_)) => {
                Err(TransportError::PipePeerRefused { endpoint: endpoint.to_string(), pid: peer.pid, sid: peer.sid })
            }
            Some(false) => Err(TransportError::PeerRefused {
                endpoint: endpoint.to_string(),
                uid: peer.uid,
                gid: peer.gid,
                pid: peer.pid,
            }),
        }
    }
}

/// Checks, on the client side, the identity of the server reached at
/// `endpoint` (as the kernel reported it when connecting), before
/// anything is sent: [`TransportError::ServerRefused`] if it does not
/// pass.
///
/// With a `policy`, the server must pass it exactly as a client passes a
/// server's [`PeerPolicy`] (uid on Unix sockets, SID on pipes; TCP is not
/// judged). Without one (the default of wharf's clients):
///
/// - a **named pipe** server must run as this process's own user or as
///   LocalSystem ([`PeerPolicy::default`]). Pipe names are one global
///   namespace that any local user can create names in, so the name alone
///   does not say who serves; a client that would talk to a server of
///   another account (a privileged client of a user's server, say) must
///   say so with a policy naming that account's SID;
/// - a **Unix socket** server is not judged: who may create a socket at a
///   path is decided by the directory it lives in (wharf's short names
///   are in a 0700 per-user directory), and servers of other users
///   (system daemons) are an ordinary setup. Pass a policy to judge them.
pub fn check_server(
    policy: Option<&PeerPolicy>,
    endpoint: &Endpoint,
    server: &PeerIdentity,
) -> Result<(), TransportError> {
    let default = PeerPolicy::default();
    let policy = match (policy, endpoint) {
        (Some(p), _) => p,
        (None, Endpoint::Pipe(_)) => &default,
        (None, _) => return Ok(()),
    };
    match policy.judge(endpoint, server) {
        None | Some(true) => Ok(()),
        Some(false) => Err(TransportError::ServerRefused {
            endpoint: endpoint.to_string(),
            pid: server.pid,
            uid: server.uid,
            sid: server.sid,
        }),
    }
}

/// This process's user SID (Windows; `None` if it cannot be read, or
/// elsewhere: there are no pipe peers to judge).
fn own_sid() -> Option<Sid> {
    #[cfg(windows)]
    match crate::windows::current_user_sid() {
        Ok(sid) => return Some(sid),
        Err(e) => tracing::warn!(error = %e, "wharf: this process's own user SID could not be read"),
    }
    None
}

/// A SID for error messages ("unknown" when it could not be read).
pub(crate) fn sid_text(sid: &Option<Sid>) -> String {
    match sid {
        Some(s) => s.to_string(),
        None => String::from("unknown (its token could not be read)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: Option<u32>, gid: Option<u32>) -> PeerIdentity {
        PeerIdentity { uid, gid, ..PeerIdentity::default() }
    }

    fn pipe_peer(sid: Option<Sid>) -> PeerIdentity {
        PeerIdentity { pid: Some(4242), sid, ..PeerIdentity::default() }
    }

    fn sid(s: &str) -> Sid {
        s.parse().unwrap()
    }

    #[test]
    fn default_is_same_user_or_root() {
        let p = PeerPolicy::default();
        assert!(p.allows(&peer(Some(1000), Some(1000)), 1000));
        assert!(p.allows(&peer(Some(0), Some(0)), 1000));
        assert!(!p.allows(&peer(Some(1001), Some(1000)), 1000));
        assert!(!p.allows(&peer(None, None), 1000), "unknown credentials must be refused");
    }

    #[test]
    fn allow_lists_are_opt_in_and_any_is_explicit() {
        let p = PeerPolicy::default().allow_uid(1001).allow_gid(50);
        assert!(p.allows(&peer(Some(1001), Some(7)), 1000));
        assert!(p.allows(&peer(Some(1002), Some(50)), 1000));
        assert!(!p.allows(&peer(Some(1002), Some(51)), 1000));
        let strict = PeerPolicy::allow_list().allow_uid(1001);
        assert!(!strict.allows(&peer(Some(1000), Some(1000)), 1000), "own uid not implied");
        assert!(!strict.allows(&peer(Some(0), Some(0)), 1000), "root not implied");
        assert!(PeerPolicy::any().allows(&peer(None, None), 1000));
        assert!(PeerPolicy::any().is_any() && !PeerPolicy::default().is_any());
    }

    #[test]
    fn pipe_default_is_same_sid_or_local_system_and_unknown_is_refused() {
        let own = sid("S-1-5-21-1-2-3-1000");
        let p = PeerPolicy::default();
        assert!(p.allows_sid(&pipe_peer(Some(own)), Some(&own)));
        assert!(p.allows_sid(&pipe_peer(Some(Sid::LOCAL_SYSTEM)), Some(&own)));
        assert!(!p.allows_sid(&pipe_peer(Some(sid("S-1-5-21-1-2-3-1001"))), Some(&own)), "another user");
        assert!(!p.allows_sid(&pipe_peer(Some(sid("S-1-5-19"))), Some(&own)), "LocalService is not SYSTEM");
        assert!(!p.allows_sid(&pipe_peer(None), Some(&own)), "an unread SID must be refused");
        // Our own SID unknown: "the same user" matches nobody, SYSTEM still does.
        assert!(!p.allows_sid(&pipe_peer(Some(own)), None));
        assert!(p.allows_sid(&pipe_peer(Some(Sid::LOCAL_SYSTEM)), None));
        // uids mean nothing on a pipe, SIDs nothing on a Unix socket.
        let by_uid = PeerIdentity { uid: Some(0), ..pipe_peer(None) };
        assert!(!p.allows_sid(&by_uid, Some(&own)));
        assert!(!PeerPolicy::allow_list().allow_sid(own).allows(&peer(Some(1000), None), 1000));
    }

    #[test]
    fn pipe_allow_lists_are_opt_in() {
        let own = sid("S-1-5-21-1-2-3-1000");
        let other = sid("S-1-5-21-1-2-3-1001");
        let strict = PeerPolicy::allow_list().allow_sid(other);
        assert!(strict.allows_sid(&pipe_peer(Some(other)), Some(&own)));
        assert!(!strict.allows_sid(&pipe_peer(Some(own)), Some(&own)), "own SID not implied");
        assert!(!strict.allows_sid(&pipe_peer(Some(Sid::LOCAL_SYSTEM)), Some(&own)), "SYSTEM not implied");
        assert!(PeerPolicy::default().allow_sid(other).allows_sid(&pipe_peer(Some(other)), Some(&own)));
        assert!(PeerPolicy::any().allows_sid(&pipe_peer(None), None));
    }

    #[test]
    fn tcp_endpoints_are_not_judged_by_uid() {
        let tcp = Endpoint::tcp("127.0.0.1:1");
        assert!(PeerPolicy::allow_list().check(&tcp, &PeerIdentity::default()).is_ok());
        assert!(check_server(Some(&PeerPolicy::allow_list()), &tcp, &PeerIdentity::default()).is_ok());
    }

    #[test]
    fn a_pipe_peer_without_a_sid_is_refused_naming_the_pipe_and_pid() {
        let ep = Endpoint::pipe("refusal").unwrap();
        let e = PeerPolicy::default().check(&ep, &pipe_peer(None)).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, TransportError::PipePeerRefused { pid: Some(4242), sid: None, .. }), "{e:?}");
        assert!(msg.contains(r"\\.\pipe\refusal") && msg.contains("4242") && msg.contains("unknown"), "{msg}");
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        let other = sid("S-1-5-21-9-9-9-1234");
        let e = PeerPolicy::allow_list().check(&ep, &pipe_peer(Some(other))).unwrap_err();
        assert!(e.to_string().contains("S-1-5-21-9-9-9-1234"), "{e}");
        assert!(PeerPolicy::any().check(&ep, &pipe_peer(None)).is_ok());
    }

    #[test]
    fn clients_judge_pipe_servers_by_default_and_unix_servers_only_when_asked() {
        let pipe = Endpoint::pipe("server-check").unwrap();
        // A pipe server whose SID could not be read is not trusted by default.
        let e = check_server(None, &pipe, &pipe_peer(None)).unwrap_err();
        assert!(matches!(e, TransportError::ServerRefused { pid: Some(4242), sid: None, .. }), "{e:?}");
        assert!(e.to_string().contains(r"\\.\pipe\server-check"), "{e}");
        assert!(check_server(None, &pipe, &pipe_peer(Some(Sid::LOCAL_SYSTEM))).is_ok(), "SYSTEM is trusted");
        let other = sid("S-1-5-21-9-9-9-1234");
        assert!(check_server(None, &pipe, &pipe_peer(Some(other))).is_err(), "another user is not");
        assert!(check_server(Some(&PeerPolicy::allow_list().allow_sid(other)), &pipe, &pipe_peer(Some(other))).is_ok());
        assert!(check_server(Some(&PeerPolicy::any()), &pipe, &pipe_peer(None)).is_ok());
        #[cfg(unix)]
        {
            let unix = Endpoint::unix("/run/x.sock");
            let foreign = peer(Some(rustix::process::geteuid().as_raw().wrapping_add(1)), None);
            assert!(check_server(None, &unix, &foreign).is_ok(), "Unix servers are not judged by default");
            let e = check_server(Some(&PeerPolicy::default()), &unix, &foreign).unwrap_err();
            assert!(matches!(e, TransportError::ServerRefused { .. }) && e.to_string().contains("/run/x.sock"));
        }
    }

    #[cfg(unix)]
    #[test]
    fn refusal_names_endpoint_and_peer() {
        let ep = Endpoint::unix("/run/x.sock");
        let e = PeerPolicy::allow_list().check(&ep, &peer(Some(4242), Some(7))).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/run/x.sock") && msg.contains("4242"), "{msg}");
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
    }
}
