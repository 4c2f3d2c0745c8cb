//! Where the load generator may send traffic: loopback addresses only.

use std::net::{SocketAddr, ToSocketAddrs};

/// Parses `HOST:PORT` or `http://HOST:PORT` and resolves it, refusing anything that is
/// not on loopback (127.0.0.0/8 or ::1). Every address the name resolves to must be on
/// loopback, and the caller connects to the returned address itself, never to the name,
/// so a later resolution cannot send traffic elsewhere.
pub fn loopback_endpoint(text: &str) -> Result<SocketAddr, String> {
    let hostport = match text.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => return Err(format!("{text}: unsupported scheme {scheme:?} (only http)")),
        None => text,
    };
    let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
    if hostport.contains('/') {
        return Err(format!("{text}: expected HOST:PORT"));
    }
    let addrs: Vec<SocketAddr> = hostport.to_socket_addrs().map_err(|e| format!("{text}: {e}"))?.collect();
    let Some(first) = addrs.first().copied() else {
        return Err(format!("{text}: resolves to no address"));
    };
    if let Some(bad) = addrs.iter().find(|a| !is_loopback(a)) {
        return Err(format!(
            "{text}: resolves to {bad}, which is not a loopback address; memo-bench only loads 127.0.0.0/8 and ::1"
        ));
    }
    Ok(first)
}

/// 127.0.0.0/8, ::1, or an IPv4-mapped loopback address.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_accepted() {
        assert_eq!(loopback_endpoint("127.0.0.1:7001").unwrap(), "127.0.0.1:7001".parse().unwrap());
        assert_eq!(loopback_endpoint("http://127.3.2.1:2379").unwrap(), "127.3.2.1:2379".parse().unwrap());
        assert_eq!(loopback_endpoint("[::1]:7001").unwrap(), "[::1]:7001".parse().unwrap());
        assert!(loopback_endpoint("[::ffff:127.0.0.1]:7001").is_ok());
        assert!(loopback_endpoint("localhost:7001").is_ok());
    }

    #[test]
    fn everything_else_refused() {
        for bad in [
            "10.0.0.1:7001",
            "192.168.1.1:7001",
            "172.16.0.1:2379",
            "8.8.8.8:53",
            "0.0.0.0:7001",
            "[::]:7001",
            "[2001:db8::1]:7001",
            "https://127.0.0.1:7001",
            "127.0.0.1",
            "127.0.0.1:7001/path",
        ] {
            assert!(loopback_endpoint(bad).is_err(), "{bad} accepted");
        }
    }
}
