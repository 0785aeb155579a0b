//! Kubernetes service links: the variables the kubelet writes into every container for every
//! Service in its namespace (unless the pod sets `enableServiceLinks: false`), recognised so
//! that they are never read as configuration, even when a Service's name makes them start
//! with `PRIME_PROXY_`.
//!
//! For a Service `prime-proxy` with ClusterIP 10.96.0.12 and one TCP port 8080 named `http`,
//! the kubelet writes (pkg/kubelet/envvars):
//!
//! ```text
//! PRIME_PROXY_SERVICE_HOST=10.96.0.12
//! PRIME_PROXY_SERVICE_PORT=8080
//! PRIME_PROXY_SERVICE_PORT_HTTP=8080
//! PRIME_PROXY_PORT=tcp://10.96.0.12:8080
//! PRIME_PROXY_PORT_8080_TCP=tcp://10.96.0.12:8080
//! PRIME_PROXY_PORT_8080_TCP_PROTO=tcp
//! PRIME_PROXY_PORT_8080_TCP_PORT=8080
//! PRIME_PROXY_PORT_8080_TCP_ADDR=10.96.0.12
//! ```
//!
//! A variable is a link when both its name and its value have one of these shapes, with a
//! name part that a Service name can produce (a DNS label, upper-cased, `-` as `_`). Checking
//! the value too keeps real mistakes visible: `PRIME_PROXY_ADMIN_PORT=9901` is not a link (a
//! link's `_PORT` is `tcp://…`), so it is still refused as an unknown key. No configuration
//! key can be mistaken for a link: their variables end in a key name (`…_LISTEN`,
//! `…__MAX_ATTEMPTS`), never in `_SERVICE_HOST`, `_SERVICE_PORT…`, `_PORT` or `_PORT_<n>_…`
//! with a link's value (a unit test checks every key).

use std::net::{IpAddr, SocketAddr};

/// Longest Service name (a DNS-1035 label).
const MAX_SERVICE_NAME: usize = 63;
/// Longest Service port name (an IANA service name).
const MAX_PORT_NAME: usize = 15;
/// Protocols a Service port can have, as they appear in variable names.
const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

/// True when `name=value` is a variable the kubelet writes for a Service.
pub fn is_service_link(name: &str, value: &str) -> bool {
    if let Some(service) = name.strip_suffix("_SERVICE_HOST") {
        if is_service_name(service) && is_cluster_ip(value) {
            return true;
        }
    }
    if let Some(service) = name.strip_suffix("_SERVICE_PORT") {
        if is_service_name(service) && port_number(value).is_some() {
            return true;
        }
    }
    if port_number(value).is_some() && is_named_service_port(name) {
        return true;
    }
    if let Some(service) = name.strip_suffix("_PORT") {
        if is_service_name(service) && link_address(value).is_some() {
            return true;
        }
    }
    is_port_link(name, value)
}

/// `<NAME>_SERVICE_PORT_<PORT NAME>`. The Service name may itself contain `_SERVICE_PORT_`
/// (a Service `a-service-port-b`), so every split is tried.
fn is_named_service_port(name: &str) -> bool {
    const MARK: &str = "_SERVICE_PORT_";
    name.match_indices(MARK)
        .any(|(at, _)| is_service_name(&name[..at]) && is_port_name(&name[at + MARK.len()..]))
}

/// What a `<NAME>_PORT_<N>_<PROTOCOL>[_<FIELD>]` variable holds.
#[derive(Clone, Copy)]
enum PortField {
    /// No field: `protocol://address:port`.
    Link,
    /// `_PROTO`: the protocol, lower case.
    Proto,
    /// `_PORT`: the port number.
    Port,
    /// `_ADDR`: the ClusterIP.
    Addr,
}

/// `<NAME>_PORT_<N>_<TCP|UDP|SCTP>` and its `_PROTO`, `_PORT` and `_ADDR` companions, whose
/// values must agree with the port number and protocol in the name.
fn is_port_link(name: &str, value: &str) -> bool {
    let candidates = [
        (Some(name), PortField::Link),
        (name.strip_suffix("_PROTO"), PortField::Proto),
        (name.strip_suffix("_PORT"), PortField::Port),
        (name.strip_suffix("_ADDR"), PortField::Addr),
    ];
    candidates.into_iter().any(|(base, field)| {
        let Some(base) = base else { return false };
        let Some((rest, protocol)) = PROTOCOLS.iter().find_map(|p| {
            base.strip_suffix(p)?
                .strip_suffix('_')
                .map(|rest| (rest, *p))
        }) else {
            return false;
        };
        let Some((rest, digits)) = rest.rsplit_once('_') else {
            return false;
        };
        let Some(port) = port_number(digits) else {
            return false;
        };
        let Some(service) = rest.strip_suffix("_PORT") else {
            return false;
        };
        if !is_service_name(service) {
            return false;
        }
        match field {
            PortField::Link => link_address(value)
                .is_some_and(|(p, n)| p.eq_ignore_ascii_case(protocol) && n == port),
            PortField::Proto => value == protocol.to_lowercase(),
            PortField::Port => port_number(value) == Some(port),
            PortField::Addr => is_cluster_ip(value),
        }
    })
}

/// A Service name as the kubelet writes it: a DNS-1035 label (`[a-z]([-a-z0-9]*[a-z0-9])?`,
/// at most 63 characters), upper-cased, with `-` as `_`.
fn is_service_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=MAX_SERVICE_NAME).contains(&bytes.len())
        && bytes[0].is_ascii_uppercase()
        && bytes[bytes.len() - 1] != b'_'
        && bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
}

/// A Service port name as the kubelet writes it: an IANA service name (at most 15 of
/// `[a-z0-9-]`, at least one letter, no leading, trailing or doubled `-`), upper-cased, with
/// `-` as `_`.
fn is_port_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=MAX_PORT_NAME).contains(&bytes.len())
        && bytes[0] != b'_'
        && bytes[bytes.len() - 1] != b'_'
        && !name.contains("__")
        && bytes.iter().any(u8::is_ascii_uppercase)
        && bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
}

/// A port number as Go's `strconv.Itoa` writes it: 1–65535, no sign, no leading zero.
fn port_number(text: &str) -> Option<u16> {
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|port| *port > 0)
}

/// A ClusterIP: an IPv4 or IPv6 address.
fn is_cluster_ip(text: &str) -> bool {
    text.parse::<IpAddr>().is_ok()
}

/// `tcp://10.96.0.12:8080` (or `udp://`, `sctp://`; IPv6 in brackets, or without them as
/// kubelets before 1.9 wrote it) → the protocol and the port.
fn link_address(text: &str) -> Option<(&str, u16)> {
    let (protocol, address) = text.split_once("://")?;
    if !PROTOCOLS.iter().any(|p| p.to_lowercase() == protocol) {
        return None;
    }
    let port = match address.parse::<SocketAddr>() {
        Ok(address) => address.port(),
        Err(_) => {
            let (ip, port) = address.rsplit_once(':')?;
            ip.parse::<IpAddr>().ok()?;
            port_number(port)?
        }
    };
    (port > 0).then_some((protocol, port))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every variable the kubelet writes for a Service with the given ports
    /// (name, port number, protocol), as pkg/kubelet/envvars does.
    pub(crate) fn kubelet_variables(
        service: &str,
        cluster_ip: &str,
        ports: &[(&str, u16, &str)],
    ) -> Vec<(String, String)> {
        let env_name = |s: &str| s.replace('-', "_").to_uppercase();
        let prefix = env_name(service);
        let host_port = |port: u16| match cluster_ip.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{cluster_ip}]:{port}"),
            _ => format!("{cluster_ip}:{port}"),
        };
        let mut out = vec![
            (format!("{prefix}_SERVICE_HOST"), cluster_ip.to_owned()),
            (format!("{prefix}_SERVICE_PORT"), ports[0].1.to_string()),
        ];
        for (name, port, _) in ports {
            if !name.is_empty() {
                out.push((
                    format!("{prefix}_SERVICE_PORT_{}", env_name(name)),
                    port.to_string(),
                ));
            }
        }
        for (i, (_, port, protocol)) in ports.iter().enumerate() {
            let lower = protocol.to_lowercase();
            let link = format!("{lower}://{}", host_port(*port));
            if i == 0 {
                out.push((format!("{prefix}_PORT"), link.clone()));
            }
            let base = format!("{prefix}_PORT_{port}_{}", protocol.to_uppercase());
            out.push((base.clone(), link));
            out.push((format!("{base}_PROTO"), lower));
            out.push((format!("{base}_PORT"), port.to_string()));
            out.push((format!("{base}_ADDR"), cluster_ip.to_owned()));
        }
        out
    }

    #[test]
    fn every_variable_the_kubelet_writes_is_a_link() {
        type Ports<'a> = &'a [(&'a str, u16, &'a str)];
        let services: &[(&str, &str, Ports)] = &[
            ("prime-proxy", "10.96.0.12", &[("http", 8080, "TCP")]),
            (
                "prime-proxy-prime-sigv4-proxy",
                "10.96.7.1",
                &[("http", 8080, "TCP"), ("admin", 9901, "TCP")],
            ),
            (
                "prime-proxy-dns",
                "fd00:10:96::a",
                &[("dns-udp", 53, "UDP")],
            ),
            ("prime-proxy-x", "10.0.0.1", &[("", 1, "SCTP")]),
            (
                "prime-proxy-service-port-a",
                "10.0.0.2",
                &[("https-2", 65535, "TCP")],
            ),
            (&"a".repeat(63), "10.0.0.3", &[("p", 80, "TCP")]),
        ];
        for (service, ip, ports) in services {
            for (name, value) in kubelet_variables(service, ip, ports) {
                assert!(is_service_link(&name, &value), "{name}={value}");
            }
        }
    }

    #[test]
    fn each_shape_is_recognised() {
        let links = [
            ("PRIME_PROXY_SERVICE_HOST", "10.96.0.12"),
            ("PRIME_PROXY_SERVICE_HOST", "fd00::12"),
            ("PRIME_PROXY_SERVICE_PORT", "8080"),
            ("PRIME_PROXY_SERVICE_PORT_HTTP", "8080"),
            ("PRIME_PROXY_SERVICE_PORT_GRPC_WEB", "81"),
            ("PRIME_PROXY_PRIME_SIGV4_PROXY_SERVICE_PORT_HTTP", "8080"),
            ("PRIME_PROXY_PORT", "tcp://10.96.0.12:8080"),
            ("PRIME_PROXY_PORT", "udp://[fd00::12]:53"),
            ("PRIME_PROXY_PORT", "tcp://fd00::12:53"),
            ("PRIME_PROXY_PORT", "sctp://10.0.0.1:9"),
            ("PRIME_PROXY_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
            ("PRIME_PROXY_PORT_53_UDP", "udp://10.96.0.12:53"),
            ("PRIME_PROXY_PORT_9_SCTP", "sctp://10.96.0.12:9"),
            ("PRIME_PROXY_PORT_8080_TCP_PROTO", "tcp"),
            ("PRIME_PROXY_PORT_8080_TCP_PORT", "8080"),
            ("PRIME_PROXY_PORT_8080_TCP_ADDR", "10.96.0.12"),
            ("PRIME_PROXY_PORT_53_UDP_ADDR", "fd00::12"),
        ];
        for (name, value) in links {
            assert!(is_service_link(name, value), "{name}={value}");
        }
    }

    #[test]
    fn names_or_values_of_another_shape_are_not_links() {
        let not_links = [
            // Real keys and their mistakes: the value is not a link's.
            ("PRIME_PROXY_LISTEN", "0.0.0.0:8080"),
            ("PRIME_PROXY_ADMIN_PORT", "9901"),
            ("PRIME_PROXY_LISTEN_PORT", "8080"),
            ("PRIME_PROXY_PORT", "8080"),
            ("PRIME_PROXY_PORT", "http://10.0.0.1:80"),
            ("PRIME_PROXY_PORT", "tcp://prime.example:80"),
            ("PRIME_PROXY_SERVICE_HOST", "prime-proxy.svc"),
            ("PRIME_PROXY_SERVICE_PORT", "http"),
            ("PRIME_PROXY_SERVICE_PORT", "08080"),
            ("PRIME_PROXY_SERVICE_PORT", "0"),
            ("PRIME_PROXY_SERVICE_PORT", "65536"),
            ("PRIME_PROXY_SERVICE_PORT", "+80"),
            ("PRIME_PROXY_RETRY__MAX_ATEMPTS", "5"),
            ("PRIME_PROXY_RETRY__MAX_ATTEMPTS", "5"),
            // The name and the value disagree.
            ("PRIME_PROXY_PORT_8080_TCP", "tcp://10.96.0.12:8081"),
            ("PRIME_PROXY_PORT_8080_TCP", "udp://10.96.0.12:8080"),
            ("PRIME_PROXY_PORT_8080_TCP_PORT", "8081"),
            ("PRIME_PROXY_PORT_8080_TCP_PROTO", "udp"),
            ("PRIME_PROXY_PORT_8080_TCP_PROTO", "TCP"),
            ("PRIME_PROXY_PORT_8080_HTTP", "tcp://10.96.0.12:8080"),
            ("PRIME_PROXY_PORT_8080_TCP_HOST", "10.96.0.12"),
            // Names no Service can produce.
            ("prime_proxy_service_host", "10.96.0.12"),
            ("PRIME_PROXY__SERVICE_HOST", "10.96.0.12"),
            ("_SERVICE_HOST", "10.96.0.12"),
            ("9PROXY_SERVICE_HOST", "10.96.0.12"),
            ("PRIME-PROXY_SERVICE_HOST", "10.96.0.12"),
            (&format!("{}_SERVICE_HOST", "A".repeat(64)), "10.0.0.1"),
            ("PRIME_PROXY_SERVICE_PORT_", "8080"),
            ("PRIME_PROXY_SERVICE_PORT_8080", "8080"),
            ("PRIME_PROXY_SERVICE_PORT_A__B", "8080"),
            ("PRIME_PROXY_SERVICE_PORT_ABCDEFGHIJKLMNOP", "8080"),
            ("PRIME_PROXY_PORT_0_TCP", "tcp://10.0.0.1:0"),
        ];
        for (name, value) in not_links {
            assert!(!is_service_link(name, value), "{name}={value}");
        }
    }
}
