//! Which local peers a server lets in, judged on the kernel's credentials
//! at accept time, before a single frame is read.

use crate::PeerIdentity;
use crate::endpoint::Endpoint;
use crate::error::TransportError;

/// Which peers of a Unix socket a server accepts, decided from the
/// credentials the kernel reports at accept time ([`PeerIdentity`], from
/// `SO_PEERCRED` or `getpeereid`), before the handshake: a refused peer is
/// closed without a frame being read or written.
///
/// The default is **the server's own effective uid, or root** (uid 0).
/// Wider access is opt-in:
///
/// ```
/// use wharf_transport::PeerPolicy;
///
/// // The default, plus one more user and everyone whose primary group is 1001.
/// let policy = PeerPolicy::default().allow_uid(1000).allow_gid(1001);
/// // Only uid 1000 (not even the server's own user or root).
/// let strict = PeerPolicy::allow_list().allow_uid(1000);
/// // Every local user that can reach the socket file (deliberately loose).
/// let open = PeerPolicy::any();
/// # let _ = (policy, strict, open);
/// ```
///
/// The policy and the socket file's mode are two independent layers: a
/// peer must be able to reach the socket (file mode, directory
/// permissions) *and* pass the policy. Loosening one leaves the other in
/// force; to let another user in, loosen both.
///
/// - Groups are the peer's **primary** gid as the kernel reports it;
///   supplementary groups are not consulted.
/// - A Unix peer whose credentials could not be read is refused (unless
///   the policy is [`any`](Self::any)): a failed lookup never counts as a
///   match.
/// - TCP peers have no uid: the policy does not apply to TCP endpoints
///   (they are loopback-only by default; authenticate TCP peers with the
///   auth hook). Windows named pipes are protected by their security
///   descriptor and `PIPE_REJECT_REMOTE_CLIENTS`; the policy does not
///   apply to them either (the peer's pid is reported, its token SID is
///   not yet checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPolicy {
    any: bool,
    same_user: bool,
    root: bool,
    uids: Vec<u32>,
    gids: Vec<u32>,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        PeerPolicy::same_user_or_root()
    }
}

impl PeerPolicy {
    /// The default: the server's own effective uid, or root.
    pub fn same_user_or_root() -> PeerPolicy {
        PeerPolicy { any: false, same_user: true, root: true, uids: Vec::new(), gids: Vec::new() }
    }

    /// Nobody yet: add who may connect with [`allow_uid`](Self::allow_uid),
    /// [`allow_gid`](Self::allow_gid), [`allow_same_user`](Self::allow_same_user)
    /// and [`allow_root`](Self::allow_root).
    pub fn allow_list() -> PeerPolicy {
        PeerPolicy { any: false, same_user: false, root: false, uids: Vec::new(), gids: Vec::new() }
    }

    /// Every peer, whatever its credentials (the file mode and directory
    /// are then the only Unix-level protection). Deliberately loose: use it
    /// only together with an auth hook or a socket only trusted users can
    /// reach.
    pub fn any() -> PeerPolicy {
        PeerPolicy { any: true, ..PeerPolicy::allow_list() }
    }

    /// Also accept peers running as `uid`.
    pub fn allow_uid(mut self, uid: u32) -> PeerPolicy {
        if !self.uids.contains(&uid) {
            self.uids.push(uid);
        }
        self
    }

    /// Also accept peers whose primary group is `gid`.
    pub fn allow_gid(mut self, gid: u32) -> PeerPolicy {
        if !self.gids.contains(&gid) {
            self.gids.push(gid);
        }
        self
    }

    /// Also accept peers with the server's own effective uid.
    pub fn allow_same_user(mut self) -> PeerPolicy {
        self.same_user = true;
        self
    }

    /// Also accept root (uid 0).
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

    /// Checks a peer accepted on `endpoint`, by a server running as this
    /// process's effective uid. Only Unix-socket endpoints are checked (see
    /// the type documentation for TCP and pipes); a refusal is
    /// [`TransportError::PeerRefused`], naming the endpoint and the peer's
    /// credentials.
    pub fn check(&self, endpoint: &Endpoint, peer: &PeerIdentity) -> Result<(), TransportError> {
        match endpoint {
            #[cfg(unix)]
            Endpoint::Unix(_) => {
                let own = rustix::process::geteuid().as_raw();
                if self.allows(peer, own) {
                    Ok(())
                } else {
                    Err(TransportError::PeerRefused {
                        endpoint: endpoint.to_string(),
                        uid: peer.uid,
                        gid: peer.gid,
                        pid: peer.pid,
                    })
                }
            }
            _ => {
                let _ = peer; // TCP and pipes: see the type documentation
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: Option<u32>, gid: Option<u32>) -> PeerIdentity {
        PeerIdentity { uid, gid, ..PeerIdentity::default() }
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
    fn tcp_endpoints_are_not_judged_by_uid() {
        let tcp = Endpoint::tcp("127.0.0.1:1");
        assert!(PeerPolicy::allow_list().check(&tcp, &PeerIdentity::default()).is_ok());
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
