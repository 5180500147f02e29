//! Access control: bearer tokens with roles. Secrets are kept only as SHA-256 digests,
//! compared in constant time, and never logged.

use std::fmt;
use std::str::FromStr;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jobward_protocol::ErrorCode;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read everything: jobs, executions, health, metrics.
    Read,
    /// Read, and trigger, pause, resume, cancel, clean up, reload.
    Operate,
    /// The worker protocol only.
    Worker,
    /// Everything operate may, and define jobs: create, change and delete them through the
    /// API (jobs with a command only where `[server] api_commands = true`).
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Role::Read),
            "operate" => Ok(Role::Operate),
            "worker" => Ok(Role::Worker),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role '{s}' (expected read, operate, admin or worker)"
            )),
        }
    }
}

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Operate,
    Admin,
    Worker,
}

impl Access {
    /// The one table of who may do what: admin includes operate, operate includes read; the
    /// worker role is the worker protocol only.
    pub fn allows(self, role: Role) -> bool {
        matches!(
            (self, role),
            (Access::Read, Role::Read | Role::Operate | Role::Admin)
                | (Access::Operate, Role::Operate | Role::Admin)
                | (Access::Admin, Role::Admin)
                | (Access::Worker, Role::Worker)
        )
    }

    /// The roles it takes, in words.
    pub fn needs(self) -> &'static str {
        match self {
            Access::Read => "read, operate or admin",
            Access::Operate => "operate or admin",
            Access::Admin => "admin",
            Access::Worker => "worker",
        }
    }
}

/// A configured token. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Token {
    pub name: String,
    pub role: Role,
    digest: [u8; 32],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}, {})", self.name, self.role)
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Token {
    pub fn new(name: impl Into<String>, role: Role, secret: &str) -> Token {
        Token {
            name: name.into(),
            role,
            digest: digest(secret),
        }
    }

    /// The SHA-256 digest of its secret (what identifies a dashboard session).
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

/// The configured tokens. None configured means no authentication (allowed only on loopback).
#[derive(Debug, Clone, Default)]
pub struct Tokens(pub Vec<Token>);

/// Who made a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name, or "anonymous" when no tokens are configured.
    pub name: String,
    /// How the ledger records what it does: `api:TOKEN-NAME` (or the server's
    /// `anonymous_actor` when no tokens are configured).
    pub actor: String,
}

impl Tokens {
    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// The token whose secret is `presented`; every configured token is compared, each in
    /// constant time, so the time taken says nothing about which one matched.
    pub fn find(&self, presented: &str) -> Option<&Token> {
        let d = digest(presented);
        let mut found = None;
        for t in &self.0 {
            if bool::from(t.digest.ct_eq(&d)) {
                found = Some(t);
            }
        }
        found
    }
}

fn unauthorized(message: &str) -> Response {
    let mut r =
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

async fn check(state: &AppState, access: Access, mut req: Request, next: Next) -> Response {
    if !state.tokens.enabled() {
        req.extensions_mut().insert(Caller {
            name: "anonymous".into(),
            actor: state.anonymous_actor.clone(),
        });
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return unauthorized("this endpoint needs a token: send Authorization: Bearer TOKEN");
    };
    let Some(token) = state.tokens.find(presented) else {
        return unauthorized("the token is not valid");
    };
    if !access.allows(token.role) {
        let needed = access.needs();
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "token '{}' has role {}; this endpoint needs {needed}",
                token.name, token.role
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(Caller {
        name: token.name.clone(),
        actor: format!("api:{}", token.name),
    });
    next.run(req).await
}

pub async fn require_read(State(state): State<AppState>, req: Request, next: Next) -> Response {
    check(&state, Access::Read, req, next).await
}

pub async fn require_operate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    check(&state, Access::Operate, req, next).await
}

pub async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    check(&state, Access::Admin, req, next).await
}

pub async fn require_worker(State(state): State<AppState>, req: Request, next: Next) -> Response {
    check(&state, Access::Worker, req, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_lookup() {
        let t = Tokens(vec![
            Token::new("ops", Role::Operate, "s3cret-operate-token"),
            Token::new("w", Role::Worker, "s3cret-worker-token"),
        ]);
        assert_eq!(t.find("s3cret-operate-token").unwrap().name, "ops");
        assert!(t.find("s3cret-operate-toke").is_none());
        assert!(t.find("").is_none());
        assert!(Access::Read.allows(Role::Operate) && Access::Read.allows(Role::Read));
        assert!(
            !Access::Read.allows(Role::Worker)
                && !Access::Operate.allows(Role::Read)
                && !Access::Worker.allows(Role::Operate)
        );
        assert!(!format!("{:?}", t).contains("s3cret"));
        assert!(Access::Operate.allows(Role::Admin) && Access::Read.allows(Role::Admin));
        assert!(!Access::Admin.allows(Role::Operate) && !Access::Worker.allows(Role::Admin));
    }
}
