//! Capabilities an app is granted beyond computing: outbound network
//! destinations and static files. Everything is denied unless the app's spec
//! grants it, and a new revision that grants more than the running one must
//! be approved (see [`CapabilityDiff`]).
//!
//! # Outbound destinations
//!
//! An entry of `allowed_outbound_hosts` is `scheme://host[:port]`, after
//! Spin's rules:
//!
//! - `scheme` is `http` or `https` (outbound HTTP requests) or `tcp` / `udp`
//!   (`wasi:sockets`).
//! - `host` is a DNS name (`api.example.com`), a wildcard of its subdomains
//!   (`*.example.com`, which does not match `example.com` itself), any host
//!   (`*`), or an IP address (`127.0.0.1`, `[::1]`).
//! - `port` is a number or `*`; without one, `http` means 80 and `https`
//!   443. `tcp` and `udp` entries must give one.
//!
//! Loopback, private, link-local and other non-public addresses are never
//! reached through a name or a wildcard, even when a name resolves there:
//! only an entry that names such an address literally grants it
//! ([`is_restricted`]). A guest that may call `https://api.example.com`
//! therefore still cannot reach the controller or another app on the node's
//! loopback.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::AppSpec;

/// Longest `allowed_outbound_hosts` list one app may have.
pub const MAX_OUTBOUND_HOSTS: usize = 64;

/// How a guest reaches a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Outbound HTTP without TLS.
    Http,
    /// Outbound HTTP over TLS.
    Https,
    /// A `wasi:sockets` TCP connection.
    Tcp,
    /// A `wasi:sockets` UDP socket.
    Udp,
}

impl Scheme {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Some(Self::Http),
            "https" => Some(Self::Https),
            "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            _ => None,
        }
    }

    /// The port meant when an entry gives none.
    pub fn default_port(self) -> Option<u16> {
        match self {
            Self::Http => Some(80),
            Self::Https => Some(443),
            Self::Tcp | Self::Udp => None,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http => "http",
            Self::Https => "https",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostMatch {
    Any,
    Name(String),
    /// `*.example.com`, stored as `.example.com`.
    Subdomains(String),
    Ip(IpAddr),
}

/// One parsed `allowed_outbound_hosts` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern {
    scheme: Scheme,
    host: HostMatch,
    /// `None` is any port.
    port: Option<u16>,
}

/// Why an `allowed_outbound_hosts` entry is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{entry:?} is not a valid outbound host ({reason}); expected e.g. \"https://api.example.com\", \"https://*.example.com:8443\" or \"tcp://10.0.0.5:5432\""
)]
pub struct PatternError {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for HostPattern {
    type Err = PatternError;

    fn from_str(entry: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError {
            entry: entry.to_owned(),
            reason,
        };
        let (scheme, rest) = entry
            .split_once("://")
            .ok_or_else(|| err("it has no scheme"))?;
        let scheme = Scheme::parse(scheme)
            .ok_or_else(|| err("the scheme is not http, https, tcp or udp"))?;
        if rest.is_empty() {
            return Err(err("it has no host"));
        }
        if rest.contains(['/', '?', '#', '@']) {
            return Err(err("only scheme, host and port are allowed"));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| err("the port is not valid"))?;
        let port = match port {
            Some("*") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| err("the port is not a number from 1 to 65535 or *"))?,
            ),
            None => Some(
                scheme
                    .default_port()
                    .ok_or_else(|| err("tcp and udp entries need a port"))?,
            ),
        };
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(ip) = parse_ip(host) {
            HostMatch::Ip(ip)
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !is_dns_name(suffix) {
                return Err(err("the host is not a DNS name"));
            }
            HostMatch::Subdomains(format!(".{}", suffix.to_ascii_lowercase()))
        } else if is_dns_name(host) {
            HostMatch::Name(host.to_ascii_lowercase())
        } else {
            return Err(err(
                "the host is not a DNS name, a wildcard or an IP address",
            ));
        };
        if matches!(scheme, Scheme::Tcp | Scheme::Udp)
            && matches!(host, HostMatch::Name(_) | HostMatch::Subdomains(_))
        {
            // Sockets see addresses, never names.
            return Err(err("tcp and udp entries name an IP address or *"));
        }
        Ok(Self { scheme, host, port })
    }
}

/// Splits `host[:port]`, where an IPv6 host is in brackets.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, Some(port))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

fn parse_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl HostPattern {
    /// Whether this entry grants `scheme` to `host:port` (before any
    /// address check). `host` is a name or an IP literal.
    pub fn matches(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        if self.scheme != scheme || self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match &self.host {
            HostMatch::Any => true,
            HostMatch::Name(name) => *name == host,
            HostMatch::Subdomains(suffix) => host.ends_with(suffix.as_str()),
            HostMatch::Ip(ip) => parse_ip(&host).is_some_and(|h| h == *ip),
        }
    }

    /// Whether this entry names `ip` literally for `scheme` and `port`: the
    /// only way a restricted address is granted.
    pub fn names_address(&self, scheme: Scheme, ip: IpAddr, port: u16) -> bool {
        self.scheme == scheme
            && self.port.is_none_or(|p| p == port)
            && matches!(self.host, HostMatch::Ip(granted) if canonical(granted) == canonical(ip))
    }
}

/// An IPv4-mapped IPv6 address is the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Addresses a guest reaches only through an entry naming them literally:
/// loopback, private (RFC 1918, unique local), link-local (cloud metadata
/// services live there), carrier-grade NAT, unspecified, multicast,
/// broadcast and documentation ranges.
pub fn is_restricted(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_restricted_v4(v4),
        IpAddr::V6(v6) => is_restricted_v6(v6),
    }
}

fn is_restricted_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        // 100.64.0.0/10: carrier-grade NAT, often another tenant's network.
        || (a == 100 && (64..128).contains(&b))
        // 198.18.0.0/15: benchmarking; 240.0.0.0/4: reserved.
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240
}

fn is_restricted_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    embedded_ipv4(ip).into_iter().flatten().any(is_restricted_v4)
        || ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique local, fe80::/10 link-local, 2001:db8::/32 docs.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        // 64:ff9b::/96 NAT64 can reach IPv4 private space.
        || (first == 0x0064 && ip.segments()[1] == 0xff9b)
}

/// The IPv4 addresses an IPv6 address carries, in every form that routes
/// to them somewhere: IPv4-compatible (`::a.b.c.d`), IPv4-translated
/// (`::ffff:0:a.b.c.d`, RFC 2765), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`),
/// 6to4 (`2002:AABB:CCDD::/48`), Teredo (`2001:0::/32`: the server, and the
/// client stored inverted) and ISATAP (an interface identifier
/// `0:5efe:a.b.c.d` or `200:5efe:a.b.c.d` under any prefix). A restricted
/// IPv4 address is refused in each of these spellings.
fn embedded_ipv4(ip: Ipv6Addr) -> [Option<Ipv4Addr>; 2] {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Some(Ipv4Addr::new(a, b, c, d))
    };
    let low = v4(s[6], s[7]);
    match s {
        // ::a.b.c.d (but :: and ::1, which are themselves restricted).
        [0, 0, 0, 0, 0, 0, ..] => [low, None],
        // ::ffff:0:a.b.c.d
        [0, 0, 0, 0, 0xffff, 0, ..] => [low, None],
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => [low, None],
        // 64:ff9b:1::/48 carries the address in bits 48..88 (RFC 6052 /48).
        [0x64, 0xff9b, 1, ..] => {
            let [b1, b2] = s[3].to_be_bytes();
            let [_, b3] = s[4].to_be_bytes();
            let [b4, _] = s[5].to_be_bytes();
            [Some(Ipv4Addr::new(b1, b2, b3, b4)), low]
        }
        [0x2002, hi, lo, ..] => [v4(hi, lo), None],
        [0x2001, 0, hi, lo, ..] => [v4(hi, lo), v4(!s[6], !s[7])],
        [.., 0 | 0x200, 0x5efe, _, _] => [low, None],
        _ => [None, None],
    }
}

/// An app's parsed outbound grants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboundRules {
    patterns: Vec<HostPattern>,
}

/// Why a guest may not reach a destination.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No entry matches the destination.
    #[error("{scheme}://{host}:{port} is not in the app's allowed_outbound_hosts")]
    NotAllowed {
        /// How it was to be reached.
        scheme: Scheme,
        /// The host as the guest wrote it.
        host: String,
        /// The port.
        port: u16,
    },
    /// The destination is (or resolves to) a restricted address that no
    /// entry names literally.
    #[error(
        "{host} resolves to {address}, a loopback, private or link-local address; only an entry naming that address literally grants it"
    )]
    Restricted {
        /// The host as the guest wrote it.
        host: String,
        /// The address it resolved to.
        address: IpAddr,
    },
}

impl OutboundRules {
    /// Parses every entry; the error names the first bad one by index.
    pub fn parse(entries: &[String]) -> Result<Self, (usize, PatternError)> {
        let patterns = entries
            .iter()
            .enumerate()
            .map(|(i, e)| e.parse().map_err(|err| (i, err)))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any entry grants `scheme` at all.
    pub fn grants(&self, scheme: Scheme) -> bool {
        self.patterns.iter().any(|p| p.scheme == scheme)
    }

    /// Checks the destination as the guest named it (before resolution).
    pub fn check_host(&self, scheme: Scheme, host: &str, port: u16) -> Result<(), Denial> {
        if self.patterns.iter().any(|p| p.matches(scheme, host, port)) {
            Ok(())
        } else {
            Err(Denial::NotAllowed {
                scheme,
                host: host.to_owned(),
                port,
            })
        }
    }

    /// Checks one address `host` resolved to (or the literal address).
    pub fn check_address(
        &self,
        scheme: Scheme,
        host: &str,
        ip: IpAddr,
        port: u16,
    ) -> Result<(), Denial> {
        if !is_restricted(ip)
            || self
                .patterns
                .iter()
                .any(|p| p.names_address(scheme, ip, port))
        {
            Ok(())
        } else {
            Err(Denial::Restricted {
                host: host.to_owned(),
                address: ip,
            })
        }
    }

    /// Checks a socket address for `wasi:sockets` (which sees no names):
    /// a matching entry, and for a restricted address one naming it.
    pub fn check_socket(&self, scheme: Scheme, ip: IpAddr, port: u16) -> Result<(), Denial> {
        let host = ip.to_string();
        if !self.patterns.iter().any(|p| p.matches(scheme, &host, port)) {
            return Err(Denial::NotAllowed { scheme, host, port });
        }
        self.check_address(scheme, &host, ip, port)
    }
}

/// How a new revision's capabilities differ from the running one's. Only
/// additions need approval; removals are listed for the record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CapabilityDiff {
    /// Outbound entries the new revision adds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_outbound_hosts: Vec<String>,
    /// Outbound entries it drops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_outbound_hosts: Vec<String>,
    /// Static file paths it adds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_files: Vec<String>,
    /// Static file paths it drops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_files: Vec<String>,
}

impl CapabilityDiff {
    /// The difference from `old` (none for a new app) to `new`.
    pub fn between(old: Option<&AppSpec>, new: &AppSpec) -> Self {
        let empty_hosts = Vec::new();
        let empty_files = BTreeMap::new();
        let old_hosts = old.map_or(&empty_hosts, |o| &o.allowed_outbound_hosts);
        let old_files = old.map_or(&empty_files, |o| &o.files);
        let minus = |a: &Vec<String>, b: &Vec<String>| -> Vec<String> {
            a.iter().filter(|x| !b.contains(x)).cloned().collect()
        };
        Self {
            added_outbound_hosts: minus(&new.allowed_outbound_hosts, old_hosts),
            removed_outbound_hosts: minus(old_hosts, &new.allowed_outbound_hosts),
            added_files: new
                .files
                .keys()
                .filter(|k| !old_files.contains_key(*k))
                .cloned()
                .collect(),
            removed_files: old_files
                .keys()
                .filter(|k| !new.files.contains_key(*k))
                .cloned()
                .collect(),
        }
    }

    /// Whether the new revision may reach anything the old one could not.
    pub fn widens(&self) -> bool {
        !self.added_outbound_hosts.is_empty() || !self.added_files.is_empty()
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl fmt::Display for CapabilityDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for h in &self.added_outbound_hosts {
            writeln!(f, "  + outbound {h}")?;
        }
        for h in &self.removed_outbound_hosts {
            writeln!(f, "  - outbound {h}")?;
        }
        for p in &self.added_files {
            writeln!(f, "  + file     {p} (read-only)")?;
        }
        for p in &self.removed_files {
            writeln!(f, "  - file     {p}")?;
        }
        Ok(())
    }
}

/// Checks a static file's guest path: relative, `/`-separated, no `.` or
/// `..` parts, at most 100 bytes (it travels in a bundle).
pub fn validate_file_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() || path.len() > 100 {
        return Err("must be 1 to 100 bytes");
    }
    if path.starts_with('/') || path.contains('\\') || path.contains('\0') {
        return Err("must be a relative path with '/' separators");
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err("must not contain empty, '.' or '..' parts");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(entries: &[&str]) -> OutboundRules {
        OutboundRules::parse(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>())
            .unwrap_or_else(|(i, e)| panic!("entry {i}: {e}"))
    }

    #[test]
    fn patterns_follow_spin() {
        let r = rules(&[
            "https://api.example.com",
            "https://*.example.org:8443",
            "http://*:*",
            "tcp://10.0.0.5:5432",
        ]);
        assert!(r.check_host(Scheme::Https, "api.example.com", 443).is_ok());
        assert!(r.check_host(Scheme::Https, "API.Example.com.", 443).is_ok());
        assert!(
            r.check_host(Scheme::Https, "api.example.com", 8443)
                .is_err()
        );
        assert!(
            r.check_host(Scheme::Https, "x.api.example.com", 443)
                .is_err()
        );
        assert!(r.check_host(Scheme::Https, "a.b.example.org", 8443).is_ok());
        assert!(r.check_host(Scheme::Https, "example.org", 8443).is_err());
        assert!(r.check_host(Scheme::Http, "anything", 8080).is_ok());
        assert!(r.check_host(Scheme::Tcp, "10.0.0.5", 5432).is_ok());
        assert!(r.check_host(Scheme::Udp, "10.0.0.5", 5432).is_err());
    }

    #[test]
    fn restricted_addresses_need_a_literal_entry() {
        let r = rules(&["http://*:*", "http://127.0.0.1:8080", "tcp://[::1]:5432"]);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(r.check_address(Scheme::Http, "localhost", lo, 8080).is_ok());
        assert!(
            r.check_address(Scheme::Http, "localhost", lo, 8081)
                .is_err()
        );
        for denied in [
            "10.1.2.3",
            "169.254.169.254",
            "192.168.0.1",
            "::ffff:127.0.0.1",
            "fe80::1",
            "fd00::1",
            "0.0.0.0",
            "100.64.0.1",
        ] {
            let ip: IpAddr = denied.parse().unwrap();
            assert!(
                r.check_address(Scheme::Http, "evil.example", ip, 80)
                    .is_err(),
                "{denied}"
            );
        }
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        assert!(
            r.check_address(Scheme::Http, "example.com", public, 80)
                .is_ok()
        );
        let v6lo = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert!(r.check_socket(Scheme::Tcp, v6lo, 5432).is_ok());
        assert!(r.check_socket(Scheme::Tcp, v6lo, 5433).is_err());
        assert!(r.check_socket(Scheme::Udp, v6lo, 5432).is_err());
    }

    #[test]
    fn every_ipv6_spelling_of_a_restricted_ipv4_address_is_restricted() {
        for spelling in [
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:0:127.0.0.1",
            "::ffff:0:a9fe:a9fe",
            "64:ff9b::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1:7f00:0:100::",
            "64:ff9b:1:a00:1:0:a00:1",
            "2002:7f00:1::",
            "2002:7f00::1",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:0101::",
            "2001:0:7f00:1::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "2001:db9::5efe:127.0.0.1",
            "2400:cb00::200:5efe:10.0.0.1",
        ] {
            let ip: IpAddr = spelling.parse().unwrap();
            assert!(is_restricted(ip), "{spelling}");
        }
        // The same forms carrying a public IPv4 address are not restricted
        // (NAT64's well-known prefix stays restricted as a whole).
        for spelling in [
            "2002:5db8:d822::1",
            "2001:0:5db8:d822::a247:2fdd",
            "2400:cb00::200:5efe:93.184.216.34",
            "2606:4700::6810:84e5",
        ] {
            let ip: IpAddr = spelling.parse().unwrap();
            assert!(!is_restricted(ip), "{spelling}");
        }
    }

    #[test]
    fn bad_entries_say_why() {
        for (entry, why) in [
            ("api.example.com", "no scheme"),
            ("ftp://x.com", "scheme"),
            ("https://", "no host"),
            ("https://x.com/path", "only scheme"),
            ("https://x.com:0", "port"),
            ("https://x.com:99999", "port"),
            ("tcp://10.0.0.1", "need a port"),
            ("https://bad host", "not a DNS name"),
            ("https://*.", "DNS name"),
            ("tcp://db.internal:5432", "IP address or *"),
        ] {
            let err = entry.parse::<HostPattern>().unwrap_err().to_string();
            assert!(err.contains(why), "{entry}: {err}");
        }
    }

    #[test]
    fn file_paths_stay_inside() {
        assert!(validate_file_path("static/index.html").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a//b",
            "./a",
            "a\\b",
        ] {
            assert!(validate_file_path(bad).is_err(), "{bad}");
        }
    }
}
