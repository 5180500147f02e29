//! Who is looking at the dashboard, and proof that a form came from the dashboard itself.
//!
//! With tokens configured, the login form stores the presented token (hex-encoded) in a
//! `Secure; HttpOnly; SameSite=Strict` cookie; every page request proves it again against the
//! configured digests, so removing a token from the configuration logs its sessions out.
//! Every form carries a CSRF token derived from a per-process secret and the session's token
//! digest; a POST without it (or from another origin) is refused and changes nothing.

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::AppState;
use crate::http::auth::Role;

pub const COOKIE: &str = "jobward_session";
/// Twelve hours; the token itself stays valid as long as it is configured.
pub const COOKIE_MAX_AGE_SECS: u64 = 12 * 3600;

/// The visitor of a dashboard page.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The token's name, or "anonymous" when no tokens are configured.
    pub name: String,
    pub can_operate: bool,
    /// Put in every form as `csrf`.
    pub csrf: String,
    /// False when tokens are off: there is nothing to log out of.
    pub logged_in: bool,
}

/// Why a visitor is not let in.
pub enum Denied {
    /// No session (or a session whose token is no longer configured).
    Login,
    /// A worker token: the dashboard is for people.
    WorkerToken,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2048 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn csrf_for(state: &AppState, identity: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"jobward-dashboard-csrf\0");
    h.update(state.dashboard_key);
    h.update(identity);
    hex(&h.finalize()[..20])
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The viewer of this request, from its session cookie.
pub fn viewer(state: &AppState, headers: &HeaderMap) -> Result<Viewer, Denied> {
    if !state.tokens.enabled() {
        return Ok(Viewer {
            name: "anonymous".into(),
            can_operate: true,
            csrf: csrf_for(state, b"anonymous"),
            logged_in: false,
        });
    }
    let secret = cookie_value(headers, COOKIE)
        .and_then(unhex)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(Denied::Login)?;
    let token = state.tokens.find(&secret).ok_or(Denied::Login)?;
    if token.role == Role::Worker {
        return Err(Denied::WorkerToken);
    }
    Ok(Viewer {
        name: token.name.clone(),
        can_operate: super::super::auth::Access::Operate.allows(token.role),
        csrf: csrf_for(state, token.digest()),
        logged_in: true,
    })
}

/// The `Set-Cookie` value that logs in with `secret`.
pub fn login_cookie(secret: &str) -> String {
    format!(
        "{COOKIE}={}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_SECS}",
        hex(secret.as_bytes())
    )
}

pub fn logout_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

/// A form post is ours when the browser does not call it cross-site, its Origin (when sent)
/// is this host, and its CSRF token is this session's. Compared in constant time.
pub fn form_is_ours(headers: &HeaderMap, viewer: &Viewer, presented: Option<&str>) -> bool {
    same_origin(headers)
        && presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(viewer.csrf.as_bytes())))
}

/// False for requests a browser marks as cross-site, or whose Origin is another host.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if matches!(header("sec-fetch-site"), Some("cross-site" | "same-site")) {
        return false;
    }
    match (header("origin"), header("host")) {
        (Some("null"), _) => false,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// Where to go after logging in: only a path on this site.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn origin_checks() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("sec-fetch-site", "cross-site")
        ])));
    }

    #[test]
    fn cookies_and_next() {
        let h = headers(&[("cookie", "a=1; jobward_session=6869; b=2")]);
        assert_eq!(cookie_value(&h, COOKIE), Some("6869"));
        assert_eq!(unhex("6869").unwrap(), b"hi");
        assert!(unhex("zz").is_none() && unhex("686").is_none());
        assert_eq!(safe_next(Some("/jobs/x?before=3")), "/jobs/x?before=3");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(None), "/");
        assert!(login_cookie("s").contains("HttpOnly; Secure; SameSite=Strict"));
    }
}
