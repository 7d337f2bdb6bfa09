//! Endpoint strings in Twisted's strports syntax, and binding them.
//!
//! `tcp:PORT[:interface=ADDR][:backlog=N]`, `tcp6:PORT[...]`, `unix:PATH[:mode=660][:backlog=N]`,
//! `ssl:PORT:privateKey=key.pem[:certKey=cert.pem][:interface=ADDR][:backlog=N]` (bound as TCP;
//! the service does the TLS handshake), `systemd:index=N` (socket activation), and a bare port
//! number for TCP. Positional parameters follow Twisted's order (tcp: port,
//! interface, backlog; unix: address, mode, backlog). A backslash escapes the next character,
//! so an IPv6 interface is written `interface=\:\:1`.
//!
//! Binding uses plain blocking sockets: it happens before the daemon forks, when no thread and
//! no runtime may exist yet.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use socket2::{Domain, Protocol, Socket, Type};

use crate::net::Listener;

/// The listen backlog when an endpoint names none (nginx's 511; the kernel caps it at somaxconn).
pub const DEFAULT_BACKLOG: u32 = 511;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Tcp {
        /// Written `tcp6:`: the socket is IPv6 only, so `tcp:80` and `tcp6:80` can live side by side.
        v6: bool,
        port: u16,
        /// `None` listens on every address of the family.
        interface: Option<IpAddr>,
        backlog: Option<u32>,
    },
    Unix {
        path: PathBuf,
        /// Permission bits given to the socket file after binding.
        mode: Option<u32>,
        backlog: Option<u32>,
    },
    /// A TCP socket whose connections speak TLS: the host binds it as TCP, the service that
    /// receives it does the handshake with these PEM files. Twisted's `certKey` defaults to
    /// `privateKey` (one file holding both).
    Ssl {
        port: u16,
        interface: Option<IpAddr>,
        backlog: Option<u32>,
        private_key: PathBuf,
        cert_key: PathBuf,
    },
    /// A listening socket passed by systemd (socket activation): the `index`-th of `LISTEN_FDS`.
    Systemd {
        index: usize,
        /// Twisted's `domain=INET|INET6|UNIX`, kept when given and checked against the socket.
        domain: Option<String>,
    },
}

/// What is wrong with an endpoint string; the message names the bad part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad endpoint '{input}': {reason}")]
pub struct ParseError {
    pub input: String,
    pub reason: String,
}

/// A listener that could not be bound; the message names the endpoint.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {endpoint}: {source}")]
pub struct BindError {
    pub endpoint: Endpoint,
    #[source]
    pub source: io::Error,
}

impl BindError {
    /// True when another process holds the address, as opposed to a lack of permission.
    pub fn is_permission(&self) -> bool {
        self.source.kind() == io::ErrorKind::PermissionDenied
    }
}

/// The lowest TCP port a process without root (CAP_NET_BIND_SERVICE) may bind.
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1024)
}

/// Splits on unescaped colons and removes the escapes.
fn split_escaped(s: &str) -> Result<Vec<String>, String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => parts.last_mut().expect("never empty").push(next),
                None => return Err("it ends with a lone backslash".into()),
            },
            ':' => parts.push(String::new()),
            c => parts.last_mut().expect("never empty").push(c),
        }
    }
    Ok(parts)
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == ':' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Assigns positional and `key=value` parameters to the names a kind accepts.
fn assign<'a>(
    kind: &str,
    names: &[&'a str],
    params: &[String],
) -> Result<Vec<(&'a str, String)>, String> {
    let mut out: Vec<(&'a str, String)> = Vec::new();
    let mut positional = names.iter();
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((key, value)) => match names.iter().find(|n| **n == key) {
                Some(name) => (*name, value.to_string()),
                None => {
                    return Err(format!(
                        "unknown parameter '{key}' for {kind} (known: {})",
                        names.join(", ")
                    ))
                }
            },
            None => match positional.next() {
                Some(name) => (*name, param.clone()),
                None => return Err(format!("too many parameters for {kind}: '{param}'")),
            },
        };
        if out.iter().any(|(n, _)| *n == name) {
            return Err(format!("parameter '{name}' is given twice"));
        }
        out.push((name, value));
    }
    Ok(out)
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .map_err(|_| format!("port '{s}' is not a number from 0 to 65535"))
}

fn parse_backlog(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n),
        _ => Err(format!("backlog '{s}' is not a number from 1 to 65535")),
    }
}

impl FromStr for Endpoint {
    type Err = ParseError;

    fn from_str(input: &str) -> Result<Self, ParseError> {
        Endpoint::parse_inner(input).map_err(|reason| ParseError {
            input: input.to_string(),
            reason,
        })
    }
}

impl Endpoint {
    fn parse_inner(input: &str) -> Result<Self, String> {
        if input.is_empty() {
            return Err("it is empty".into());
        }
        if input.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Endpoint::Tcp {
                v6: false,
                port: parse_port(input)?,
                interface: None,
                backlog: None,
            });
        }
        let parts = split_escaped(input)?;
        let (kind, params) = parts.split_first().expect("split yields at least one part");
        match kind.as_str() {
            "tcp" | "tcp6" => {
                let v6 = kind == "tcp6";
                let mut port = None;
                let mut interface = None;
                let mut backlog = None;
                for (name, value) in assign(kind, &["port", "interface", "backlog"], params)? {
                    match name {
                        "port" => port = Some(parse_port(&value)?),
                        "interface" if value.is_empty() => {}
                        "interface" => {
                            let addr: IpAddr = value
                                .parse()
                                .map_err(|_| format!("interface '{value}' is not an IP address"))?;
                            if v6 && addr.is_ipv4() {
                                return Err(format!(
                                    "interface '{value}' is IPv4 but the endpoint is tcp6"
                                ));
                            }
                            interface = Some(addr);
                        }
                        _ => backlog = Some(parse_backlog(&value)?),
                    }
                }
                let port = port.ok_or_else(|| format!("{kind} needs a port, as in {kind}:8080"))?;
                Ok(Endpoint::Tcp {
                    v6,
                    port,
                    interface,
                    backlog,
                })
            }
            "unix" => {
                let mut path = None;
                let mut mode = None;
                let mut backlog = None;
                for (name, value) in assign("unix", &["address", "mode", "backlog"], params)? {
                    match name {
                        "address" if value.is_empty() => {
                            return Err("the socket path is empty".into())
                        }
                        "address" => path = Some(PathBuf::from(value)),
                        "mode" => {
                            mode = Some(
                                u32::from_str_radix(&value, 8)
                                    .ok()
                                    .filter(|m| *m <= 0o777)
                                    .ok_or_else(|| {
                                        format!(
                                            "mode '{value}' is not octal permission bits like 660"
                                        )
                                    })?,
                            )
                        }
                        _ => backlog = Some(parse_backlog(&value)?),
                    }
                }
                let path = path.ok_or("unix needs a socket path, as in unix:/run/web.sock")?;
                Ok(Endpoint::Unix {
                    path,
                    mode,
                    backlog,
                })
            }
            "systemd" => {
                let mut index = None;
                let mut domain = None;
                for (name, value) in assign("systemd", &["index", "domain"], params)? {
                    if name == "index" {
                        index = Some(value.parse::<usize>().map_err(|_| {
                            format!("index '{value}' is not a descriptor number like 0")
                        })?);
                    } else if matches!(value.as_str(), "INET" | "INET6" | "UNIX") {
                        domain = Some(value);
                    } else {
                        return Err(format!("domain '{value}' is not INET, INET6 or UNIX"));
                    }
                }
                let index = index.ok_or("systemd needs an index, as in systemd:index=0")?;
                Ok(Endpoint::Systemd { index, domain })
            }
            "ssl" => {
                let mut port = None;
                let mut interface = None;
                let mut backlog = None;
                let mut private_key = None;
                let mut cert_key = None;
                let names = ["port", "privateKey", "certKey", "interface", "backlog"];
                for (name, value) in assign("ssl", &names, params)? {
                    match name {
                        "port" => port = Some(parse_port(&value)?),
                        "privateKey" | "certKey" if value.is_empty() => {
                            return Err(format!("{name} is empty"))
                        }
                        "privateKey" => private_key = Some(PathBuf::from(value)),
                        "certKey" => cert_key = Some(PathBuf::from(value)),
                        "interface" if value.is_empty() => {}
                        "interface" => {
                            interface = Some(value.parse::<IpAddr>().map_err(|_| {
                                format!("interface '{value}' is not an IP address")
                            })?)
                        }
                        _ => backlog = Some(parse_backlog(&value)?),
                    }
                }
                let port = port.ok_or("ssl needs a port, as in ssl:8443:privateKey=key.pem")?;
                let private_key = private_key
                    .ok_or("ssl needs privateKey, as in ssl:8443:privateKey=key.pem")?;
                Ok(Endpoint::Ssl {
                    port,
                    interface,
                    backlog,
                    cert_key: cert_key.unwrap_or_else(|| private_key.clone()),
                    private_key,
                })
            }
            other => Err(format!(
                "unknown endpoint type '{other}' (known: tcp, tcp6, ssl, unix, systemd, or a bare port number)"
            )),
        }
    }

    /// The port a TCP endpoint asks for (0 means the kernel picks one).
    pub fn port(&self) -> Option<u16> {
        match self {
            Endpoint::Tcp { port, .. } | Endpoint::Ssl { port, .. } => Some(*port),
            Endpoint::Unix { .. } | Endpoint::Systemd { .. } => None,
        }
    }

    /// The address a TCP endpoint binds.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Tcp {
                v6,
                port,
                interface,
                ..
            } => {
                let ip = interface.unwrap_or(if *v6 {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                });
                Some(SocketAddr::new(ip, *port))
            }
            Endpoint::Ssl {
                port, interface, ..
            } => Some(SocketAddr::new(
                interface.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                *port,
            )),
            Endpoint::Unix { .. } | Endpoint::Systemd { .. } => None,
        }
    }

    /// Whether this process could bind the endpoint again after closing it: not a socket
    /// systemd passed (taken once, at start), nor a TCP port below the kernel's unprivileged
    /// start (`net.ipv4.ip_unprivileged_port_start`, 1024 by default) once root is given up.
    pub fn can_bind_again(&self) -> bool {
        match self {
            Endpoint::Systemd { .. } => false,
            Endpoint::Tcp { port, .. } | Endpoint::Ssl { port, .. } => {
                *port == 0 || nix::unistd::geteuid().is_root() || *port >= unprivileged_port_start()
            }
            Endpoint::Unix { .. } => true,
        }
    }

    /// Whether two endpoints could not both be bound at once. Port 0 never conflicts: the
    /// kernel gives each its own port.
    pub fn conflicts_with(&self, other: &Endpoint) -> bool {
        match (self, other) {
            (Endpoint::Unix { path: a, .. }, Endpoint::Unix { path: b, .. }) => a == b,
            (Endpoint::Systemd { index: a, .. }, Endpoint::Systemd { index: b, .. }) => a == b,
            (
                Endpoint::Tcp { .. } | Endpoint::Ssl { .. },
                Endpoint::Tcp { .. } | Endpoint::Ssl { .. },
            ) => {
                let (a, b) = (
                    self.socket_addr().expect("tcp has an address"),
                    other.socket_addr().expect("tcp has an address"),
                );
                a.port() != 0
                    && a.port() == b.port()
                    && a.is_ipv4() == b.is_ipv4()
                    && (a.ip().is_unspecified() || b.ip().is_unspecified() || a.ip() == b.ip())
            }
            _ => false,
        }
    }

    /// Binds the endpoint with blocking calls, ready to be handed to a service.
    pub fn bind(&self) -> Result<Listener, BindError> {
        let fail = |source| BindError {
            endpoint: self.clone(),
            source,
        };
        match self {
            Endpoint::Tcp { v6, backlog, .. } => {
                let addr = self.socket_addr().expect("tcp has an address");
                bind_tcp(
                    addr,
                    *v6 || addr.is_ipv6(),
                    backlog.unwrap_or(DEFAULT_BACKLOG),
                )
                .map(Listener::Tcp)
                .map_err(fail)
            }
            Endpoint::Ssl { backlog, .. } => {
                let addr = self.socket_addr().expect("ssl has an address");
                bind_tcp(addr, addr.is_ipv6(), backlog.unwrap_or(DEFAULT_BACKLOG))
                    .map(Listener::Tcp)
                    .map_err(fail)
            }
            Endpoint::Unix {
                path,
                mode,
                backlog,
            } => bind_unix(path, *mode, backlog.unwrap_or(DEFAULT_BACKLOG))
                .map(Listener::Unix)
                .map_err(fail),
            Endpoint::Systemd { index, domain } => {
                crate::activation::take(*index, domain.as_deref()).map_err(fail)
            }
        }
    }
}

fn bind_tcp(addr: SocketAddr, v6_only: bool, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As nginx and Twisted do: a restart must not wait for TIME_WAIT connections to expire.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6_only)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn bind_unix(
    path: &Path,
    mode: Option<u32>,
    backlog: u32,
) -> io::Result<std::os::unix::net::UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        // A socket file nobody accepts on is left over from a process that died: replace it.
        // One that answers belongs to a live server and is not touched.
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on this socket",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)?,
            Err(e) => return Err(e),
        }
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl fmt::Display for Endpoint {
    /// The canonical form: what the tap stores and what two equal endpoints share.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp {
                v6,
                port,
                interface,
                backlog,
            } => {
                write!(f, "{}:{port}", if *v6 { "tcp6" } else { "tcp" })?;
                if let Some(ip) = interface {
                    write!(f, ":interface={}", escape(&ip.to_string()))?;
                }
                if let Some(n) = backlog {
                    write!(f, ":backlog={n}")?;
                }
            }
            Endpoint::Unix {
                path,
                mode,
                backlog,
            } => {
                write!(f, "unix:{}", escape(&path.to_string_lossy()))?;
                if let Some(m) = mode {
                    write!(f, ":mode={m:o}")?;
                }
                if let Some(n) = backlog {
                    write!(f, ":backlog={n}")?;
                }
            }
            Endpoint::Ssl {
                port,
                interface,
                backlog,
                private_key,
                cert_key,
            } => {
                write!(
                    f,
                    "ssl:{port}:privateKey={}",
                    escape(&private_key.to_string_lossy())
                )?;
                if cert_key != private_key {
                    write!(f, ":certKey={}", escape(&cert_key.to_string_lossy()))?;
                }
                if let Some(ip) = interface {
                    write!(f, ":interface={}", escape(&ip.to_string()))?;
                }
                if let Some(n) = backlog {
                    write!(f, ":backlog={n}")?;
                }
            }
            Endpoint::Systemd { index, domain } => {
                if let Some(domain) = domain {
                    write!(f, "systemd:domain={domain}:index={index}")?;
                } else {
                    write!(f, "systemd:index={index}")?;
                }
            }
        }
        Ok(())
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Endpoint {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn reason(s: &str) -> String {
        s.parse::<Endpoint>().expect_err(s).reason
    }

    #[test]
    fn canonical_forms() {
        for (input, canonical) in [
            ("8080", "tcp:8080"),
            ("tcp:8080", "tcp:8080"),
            (
                "tcp:8080:interface=127.0.0.1",
                "tcp:8080:interface=127.0.0.1",
            ),
            (
                "tcp:8080:127.0.0.1:50",
                "tcp:8080:interface=127.0.0.1:backlog=50",
            ),
            ("tcp:port=80:backlog=9", "tcp:80:backlog=9"),
            (r"tcp6:8080:interface=\:\:1", r"tcp6:8080:interface=\:\:1"),
            ("unix:/run/web.sock:mode=660", "unix:/run/web.sock:mode=660"),
            ("unix:address=/tmp/a\\:b", "unix:/tmp/a\\:b"),
            ("systemd:index=0", "systemd:index=0"),
            ("ssl:8443:privateKey=k.pem", "ssl:8443:privateKey=k.pem"),
            (
                "ssl:8443:k.pem:c.pem",
                "ssl:8443:privateKey=k.pem:certKey=c.pem",
            ),
            (
                "ssl:port=443:certKey=c.pem:privateKey=k.pem:interface=127.0.0.1",
                "ssl:443:privateKey=k.pem:certKey=c.pem:interface=127.0.0.1",
            ),
            ("systemd:domain=INET:index=2", "systemd:domain=INET:index=2"),
        ] {
            assert_eq!(parse(input).to_string(), canonical, "{input}");
            assert_eq!(parse(canonical), parse(input), "{canonical} round trip");
        }
    }

    #[test]
    fn errors_name_the_bad_part() {
        assert!(reason("tcp:80x").contains("port '80x'"));
        assert!(reason("tcp:99999").contains("port '99999'"));
        assert!(reason("tcp:80:interface=nowhere").contains("interface 'nowhere'"));
        assert!(reason("tcp:80:colour=blue").contains("unknown parameter 'colour'"));
        assert!(reason("tcpp:80").contains("unknown endpoint type 'tcpp'"));
        assert!(reason("tcp").contains("needs a port"));
        assert!(reason("tcp6:80:interface=127.0.0.1").contains("IPv4"));
        assert!(reason("unix:/x:mode=999").contains("mode '999'"));
        assert!(reason("tcp:80:backlog=0").contains("backlog '0'"));
        assert!(reason("tcp:80:1.2.3.4:5:6").contains("too many"));
        assert!(reason("tcp:80:port=81").contains("twice"));
        assert!(reason("ssl:443").contains("needs privateKey"));
        assert!(reason("ssl:443:privateKey=").contains("privateKey is empty"));
        assert!(reason("systemd:index=x").contains("index 'x'"));
        assert!(reason("systemd:domain=IPX:index=0").contains("domain 'IPX'"));
        assert!(reason("systemd").contains("needs an index"));
        assert!(reason("").contains("empty"));
        assert!(reason("tcp:80\\").contains("backslash"));
    }

    #[test]
    fn conflicts() {
        let c = |a: &str, b: &str| parse(a).conflicts_with(&parse(b));
        assert!(c("tcp:80", "80"));
        assert!(c("tcp:80", "tcp:80:interface=127.0.0.1"));
        assert!(!c(
            "tcp:80:interface=127.0.0.1",
            "tcp:80:interface=127.0.0.2"
        ));
        assert!(!c("tcp:80", "tcp6:80"));
        assert!(!c("tcp:0", "tcp:0"));
        assert!(c("unix:/a", "unix:/a"));
        assert!(!c("unix:/a", "tcp:80"));
        assert!(c("ssl:443:privateKey=k", "tcp:443"));
    }

    #[test]
    fn binds_port_zero_and_reports_busy_ports() {
        let listener = parse("tcp:0:interface=127.0.0.1")
            .bind()
            .expect("bind port 0");
        let Listener::Tcp(ref tcp) = listener else {
            panic!("tcp endpoint gave {listener:?}")
        };
        let port = tcp.local_addr().expect("local addr").port();
        assert_ne!(port, 0);
        let busy = parse(&format!("tcp:{port}:interface=127.0.0.1"))
            .bind()
            .expect_err("second bind of a port in use");
        assert_eq!(busy.source.kind(), io::ErrorKind::AddrInUse);
        assert!(busy
            .to_string()
            .contains(&format!("tcp:{port}:interface=127.0.0.1")));
    }

    #[test]
    fn stale_unix_socket_is_replaced_live_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let endpoint = parse(&format!("unix:{}:mode=600", path.display()));
        let live = endpoint.bind().expect("first bind");
        assert_eq!(
            std::fs::metadata(&path)
                .expect("socket file")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let err = endpoint.bind().expect_err("socket in use");
        assert_eq!(err.source.kind(), io::ErrorKind::AddrInUse);
        drop(live); // the file stays behind, as after a crash
        endpoint.bind().expect("stale socket replaced");
        std::fs::write(dir.path().join("plain"), "x").expect("write");
        let plain = parse(&format!("unix:{}", dir.path().join("plain").display()));
        assert!(plain.bind().is_err());
    }
}
