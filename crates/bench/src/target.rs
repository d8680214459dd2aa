//! The guard every load run passes before it opens a socket: this tool only ever
//! sends load to the machine it runs on (127.0.0.0/8, `::1` or `localhost`).

use std::net::IpAddr;

use tonic::codegen::http::Uri;

/// A target this tool refuses to send load to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedTarget {
    pub target: String,
    pub reason: String,
}

impl std::fmt::Display for RefusedTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refusing target {:?}: {} (badge-bench only sends load to 127.0.0.0/8, ::1 or localhost)",
            self.target, self.reason
        )
    }
}

impl std::error::Error for RefusedTarget {}

/// Checks that `target` is an `https://` URI whose host is a loopback address, or
/// `localhost` resolving only to loopback addresses. Other names are refused
/// without being resolved.
pub async fn check_loopback(target: &str) -> Result<(), RefusedTarget> {
    let refuse = |reason: String| RefusedTarget {
        target: target.to_string(),
        reason,
    };
    let uri: Uri = target
        .parse()
        .map_err(|e| refuse(format!("not a URI: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(refuse("the scheme must be https (mTLS)".to_string()));
    }
    let host = uri
        .host()
        .ok_or_else(|| refuse("no host".to_string()))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        let port = uri.port_u16().unwrap_or(443);
        let addrs: Vec<_> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| refuse(format!("resolving localhost: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(refuse("localhost resolves to nothing".to_string()));
        }
        if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(refuse(format!("localhost resolves to {}", bad.ip())));
        }
        return Ok(());
    }
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(()),
        Ok(ip) => Err(refuse(format!("{ip} is not a loopback address"))),
        Err(_) => Err(refuse(format!(
            "host {host:?} is neither a loopback address nor localhost"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_only() {
        for ok in [
            "https://127.0.0.1:8443",
            "https://127.1.2.3:1",
            "https://[::1]:8443",
            "https://localhost:8443",
            "https://LOCALHOST",
        ] {
            assert_eq!(check_loopback(ok).await, Ok(()), "{ok}");
        }
        for bad in [
            "https://10.0.0.1:1",
            "https://0.0.0.0:1",
            "https://[::]:1",
            "https://[::ffff:10.0.0.1]:1",
            "https://192.168.1.1",
            "https://example.com:443",
            "https://localhost.example.com:443",
            "http://127.0.0.1:8080",
            "127.0.0.1:8080",
            "https://",
        ] {
            assert!(check_loopback(bad).await.is_err(), "{bad} must be refused");
        }
    }
}
