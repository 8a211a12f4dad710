//! What users type: protocols, ports, ranges, service names and actions.

use std::{fmt, str::FromStr};

use port_demux_common::{PROTO_TCP, PROTO_UDP};

use crate::Error;

/// A demultiplexed transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// The protocol's half of the per-port arrays.
    #[must_use]
    pub const fn index(self) -> u32 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }

    /// The protocol of a per-port array index.
    #[must_use]
    pub const fn from_index(index: u32) -> Self {
        if index >> 16 == PROTO_TCP {
            Self::Tcp
        } else {
            Self::Udp
        }
    }

    /// `"tcp"` or `"udp"`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Proto {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            _ => Err(Error::BadSpec(format!(
                "unknown protocol {s:?}: use tcp or udp"
            ))),
        }
    }
}

/// A protocol and an inclusive range of ports: `udp/53`, `tcp/8000-8099`, `tcp/http`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// The protocol.
    pub proto: Proto,
    /// First port.
    pub first: u16,
    /// Last port (equal to `first` for a single port).
    pub last: u16,
}

impl PortSpec {
    /// One port.
    #[must_use]
    pub const fn single(proto: Proto, port: u16) -> Self {
        Self {
            proto,
            first: port,
            last: port,
        }
    }

    /// The ports, in order.
    pub fn ports(&self) -> impl Iterator<Item = u16> + use<> {
        self.first..=self.last
    }

    /// Number of ports.
    #[must_use]
    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Never empty; here for clippy's `len_without_is_empty`.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}/{}", self.proto, self.first)
        } else {
            write!(f, "{}/{}-{}", self.proto, self.first, self.last)
        }
    }
}

impl FromStr for PortSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let Some((proto, ports)) = s.split_once('/') else {
            return Err(Error::BadSpec(format!(
                "{s:?} is not PROTO/PORT: write it like udp/53, tcp/8000-8099 or tcp/http"
            )));
        };
        let proto: Proto = proto.parse()?;
        if ports.is_empty() {
            return Err(Error::BadSpec(format!(
                "{s:?} has no port: write it like {proto}/80"
            )));
        }
        if let Some(port) = service_port(ports, proto) {
            return Ok(Self::single(proto, port));
        }
        if ports.matches('-').count() > 1
            && ports
                .split('-')
                .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(Error::BadSpec(format!(
                "{s:?} is not a port range: write it like {proto}/8000-8099"
            )));
        }
        let (first, last) = if let Some((first, last)) = ports.split_once('-') {
            (port(first, proto, s)?, port(last, proto, s)?)
        } else {
            let p = port(ports, proto, s)?;
            (p, p)
        };
        if first > last {
            return Err(Error::BadSpec(format!(
                "range {s:?} runs backwards: write the lower port first, {proto}/{last}-{first}"
            )));
        }
        Ok(Self { proto, first, last })
    }
}

fn port(text: &str, proto: Proto, whole: &str) -> Result<u16, Error> {
    if text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() {
        return text.parse::<u16>().map_err(|_| {
            Error::BadSpec(format!(
                "port {text} in {whole:?} is out of range: ports are 0 to 65535"
            ))
        });
    }
    service_port(text, proto).ok_or_else(|| {
        let other = match proto {
            Proto::Tcp => Proto::Udp,
            Proto::Udp => Proto::Tcp,
        };
        match service_port(text, other) {
            Some(port) => Error::BadSpec(format!(
                "service {text:?} in {whole:?} has no {proto} entry in /etc/services (it is {other}/{port} only): give the {proto} port as a number"
            )),
            None => Error::BadSpec(format!(
                "unknown {proto} service {text:?} in {whole:?}: give a port number or a name from /etc/services"
            )),
        }
    })
}

/// Services known when there is no `/etc/services` (a minimal container may lack it); when the
/// file exists it alone is read, so a name binds only the protocols it lists.
const BUILTIN_SERVICES: &[(&str, u16, Option<Proto>)] = &[
    ("ssh", 22, None),
    ("smtp", 25, Some(Proto::Tcp)),
    ("domain", 53, None),
    ("dns", 53, None),
    ("http", 80, None),
    ("ntp", 123, Some(Proto::Udp)),
    ("https", 443, None),
    ("syslog", 514, Some(Proto::Udp)),
    ("http-alt", 8080, Some(Proto::Tcp)),
];

/// The port of a service name for `proto`, from `/etc/services`, or from the built-in table when
/// there is no such file.
#[must_use]
pub fn service_port(name: &str, proto: Proto) -> Option<u16> {
    if name.is_empty() || name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Ok(services) = std::fs::read_to_string("/etc/services") {
        return lookup_services(&services, name, proto);
    }
    BUILTIN_SERVICES
        .iter()
        .find(|(n, _, p)| *n == name && p.is_none_or(|p| p == proto))
        .map(|(_, port, _)| *port)
}

/// Finds `name` (or an alias) for `proto` in the text of an `/etc/services` file.
#[must_use]
pub fn lookup_services(services: &str, name: &str, proto: Proto) -> Option<u16> {
    services.lines().find_map(|line| {
        let line = line.split('#').next()?;
        let mut fields = line.split_whitespace();
        let service = fields.next()?;
        let (port, p) = fields.next()?.split_once('/')?;
        if p != proto.name() {
            return None;
        }
        let mut names = std::iter::once(service).chain(fields);
        names.any(|n| n == name).then(|| port.parse().ok())?
    })
}

/// What a binding does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Hand the frames to the kernel stack.
    Pass,
    /// Drop them.
    Drop,
    /// Transmit them out of another interface (in the same network namespace).
    Redirect(String),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pass => f.write_str("pass"),
            Self::Drop => f.write_str("drop"),
            Self::Redirect(iface) => write!(f, "redirect:{iface}"),
        }
    }
}

impl FromStr for Action {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "pass" => Ok(Self::Pass),
            "drop" => Ok(Self::Drop),
            _ => match s.strip_prefix("redirect:") {
                Some(iface) if valid_ifname(iface) => Ok(Self::Redirect(iface.to_owned())),
                Some(iface) => Err(Error::BadSpec(format!(
                    "{iface:?} is not an interface name: write redirect:IFACE, e.g. redirect:eth1"
                ))),
                None => Err(Error::BadSpec(format!(
                    "unknown action {s:?}: use pass, drop or redirect:IFACE"
                ))),
            },
        }
    }
}

/// Serializes each type as its `Display` text (`"udp"`, `"tcp/8000-8099"`, `"redirect:eth2"`).
macro_rules! serialize_as_text {
    ($($t:ty),*) => {$(
        #[cfg(feature = "serde")]
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_as_text!(Proto, PortSpec, Action);

/// The default action for unbound ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum DefaultAction {
    /// Pass unbound ports to the stack.
    #[default]
    Pass,
    /// Drop frames to unbound ports.
    Drop,
}

/// Whether `name` can be a Linux interface name.
#[must_use]
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<PortSpec, String> {
        s.parse::<PortSpec>().map_err(|e| e.to_string())
    }

    #[test]
    fn ports_ranges_and_services() {
        assert_eq!(spec("udp/53").unwrap(), PortSpec::single(Proto::Udp, 53));
        assert_eq!(spec("TCP/0").unwrap(), PortSpec::single(Proto::Tcp, 0));
        assert_eq!(
            spec("tcp/65535").unwrap(),
            PortSpec::single(Proto::Tcp, 65535)
        );
        let range = spec("tcp/8000-8099").unwrap();
        assert_eq!((range.first, range.last, range.len()), (8000, 8099, 100));
        assert_eq!(spec("udp/0-65535").unwrap().len(), 65536);
        assert_eq!(spec("tcp/http").unwrap(), PortSpec::single(Proto::Tcp, 80));
        assert_eq!(spec("tcp/ssh").unwrap(), PortSpec::single(Proto::Tcp, 22));
        assert_eq!(spec("tcp/http-https").unwrap().len(), 443 - 80 + 1);
        if std::path::Path::new("/etc/services").exists() {
            // /etc/services names http for tcp only (Debian's netbase, and IANA).
            let e = spec("udp/http-https").unwrap_err();
            assert!(
                e.contains("\"http\"") && e.contains("no udp entry") && e.contains("tcp/80"),
                "{e}"
            );
            assert_eq!(
                spec("udp/https").unwrap(),
                PortSpec::single(Proto::Udp, 443)
            );
        }
    }

    #[test]
    fn bad_specs_say_what_to_do() {
        for (input, wanted) in [
            ("udp/65536", "out of range"),
            ("udp/99999999999", "out of range"),
            ("sctp/80", "unknown protocol"),
            ("udp", "is not PROTO/PORT"),
            ("udp/", "has no port"),
            ("udp/90-80", "runs backwards"),
            ("tcp/no-such-service-xyz", "unknown tcp service"),
            ("udp/-5", "unknown udp service"),
            ("udp/1-2-3", "is not a port range"),
        ] {
            let err = spec(input).unwrap_err();
            assert!(err.contains(wanted), "{input}: {err}");
            assert!(!err.contains('\n'), "{input}: one line: {err}");
        }
    }

    #[test]
    fn services_file_aliases_and_protocols() {
        let services = "www 80/tcp http # comment\nntp 123/udp\n# x 1/tcp\n";
        assert_eq!(lookup_services(services, "http", Proto::Tcp), Some(80));
        assert_eq!(lookup_services(services, "www", Proto::Tcp), Some(80));
        assert_eq!(lookup_services(services, "www", Proto::Udp), None);
        assert_eq!(lookup_services(services, "ntp", Proto::Udp), Some(123));
        assert_eq!(lookup_services(services, "x", Proto::Tcp), None);
    }

    #[test]
    fn actions() {
        assert_eq!("pass".parse::<Action>().unwrap(), Action::Pass);
        assert_eq!("drop".parse::<Action>().unwrap(), Action::Drop);
        assert_eq!(
            "redirect:veth1".parse::<Action>().unwrap(),
            Action::Redirect("veth1".into())
        );
        assert!("redirect:".parse::<Action>().is_err());
        assert!("redirect:a/b".parse::<Action>().is_err());
        assert!("accept".parse::<Action>().is_err());
        assert_eq!(Action::Redirect("x".into()).to_string(), "redirect:x");
    }
}
