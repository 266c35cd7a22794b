//! Every failure a request can end in, mapped once to a Kubernetes `Status` body. Clients
//! (kubectl, kube-rs) parse every non-2xx body as a `Status`, so nothing else is ever returned.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::store::StoreError;

/// One field-level problem, as `details.causes[]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, ...
    pub reason: &'static str,
    /// Dotted path such as `spec.cpu`.
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn new(reason: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Which object an error is about; `resource` is the group-qualified plural (`virtualmachines.strata.io`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Target {
    pub group: String,
    pub resource: String,
    pub kind: String,
    pub name: String,
}

impl Target {
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
    fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

/// The details of an apply conflict: the message lists each conflict, the causes name each
/// field (`FieldManagerConflict`).
#[derive(Debug)]
pub struct ApplyConflict {
    pub target: Target,
    pub message: String,
    pub causes: Vec<Cause>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound(Target),
    #[error("already exists")]
    AlreadyExists(Target),
    #[error("conflict")]
    Conflict(Target),
    /// A server-side apply that would change fields other managers own (boxed: it is large).
    #[error("{}", .0.message)]
    ApplyConflict(Box<ApplyConflict>),
    #[error("invalid")]
    Invalid(Target, Vec<Cause>),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    /// A body in a media type the endpoint does not decode: 415 naming the types it accepts,
    /// as kube-apiserver answers.
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {0}"
    )]
    UnsupportedMediaType(&'static str),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the server could not find the requested resource")]
    NoSuchResource,
    #[error("{0}")]
    Expired(String),
    #[error("the request body is too large: limit is {0} bytes")]
    TooLarge(usize),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound(_) | ApiError::NoSuchResource => 404,
            ApiError::AlreadyExists(_) | ApiError::Conflict(_) | ApiError::ApplyConflict(..) => 409,
            ApiError::Invalid(..) => 422,
            ApiError::BadRequest(_) => 400,
            ApiError::Forbidden(_) => 403,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Unauthorized => 401,
            ApiError::MethodNotAllowed => 405,
            ApiError::Expired(_) => 410,
            ApiError::TooLarge(_) => 413,
            ApiError::Internal(_) => 500,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) | ApiError::NoSuchResource => "NotFound",
            ApiError::AlreadyExists(_) => "AlreadyExists",
            ApiError::Conflict(_) | ApiError::ApplyConflict(..) => "Conflict",
            ApiError::Invalid(..) => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::Expired(_) => "Expired",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::Internal(_) => "InternalError",
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::NotFound(t) => format!("{} \"{}\" not found", t.qualified(), t.name),
            ApiError::AlreadyExists(t) => format!("{} \"{}\" already exists", t.qualified(), t.name),
            ApiError::Conflict(t) => format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                t.qualified(),
                t.name
            ),
            ApiError::Invalid(t, causes) => {
                let errs: Vec<String> =
                    causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
                let list = if errs.len() == 1 {
                    errs[0].clone()
                } else {
                    format!("[{}]", errs.join(", "))
                };
                format!("{} \"{}\" is invalid: {}", t.qualified_kind(), t.name, list)
            }
            other => other.to_string(),
        }
    }

    /// The `Status` object, also used for in-stream watch ERROR events.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let target = match self {
            ApiError::NotFound(t) | ApiError::AlreadyExists(t) | ApiError::Conflict(t) => Some(t),
            ApiError::Invalid(t, _) => Some(t),
            ApiError::ApplyConflict(c) => Some(&c.target),
            _ => None,
        };
        if let Some(t) = target {
            let mut details = json!({"name": t.name, "group": t.group, "kind": t.resource});
            let causes = match self {
                ApiError::Invalid(t, causes) => {
                    details["kind"] = json!(t.kind);
                    Some(causes)
                }
                ApiError::ApplyConflict(c) => Some(&c.causes),
                _ => None,
            };
            if let Some(causes) = causes {
                details["causes"] = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
            }
            status["details"] = details;
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(msg) = &self {
            tracing::error!(error = %msg, "request failed");
        }
        let code = StatusCode::from_u16(self.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        crate::handlers::json_response(code, &self.status())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // NotFound/AlreadyExists/Conflict are translated by callers, who know the object; what
        // reaches here is a backend failure.
        ApiError::Internal(format!("storage: {e}"))
    }
}

/// Errors that stop `serve` itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to open the store")]
    Store(#[source] StoreError),
    #[error("failed to install CRD {name}")]
    InstallCrd {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("failed to set up TLS")]
    Tls(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("failed to serve HTTP")]
    Serve(#[source] std::io::Error),
    #[error("failed to create data directory")]
    DataDir(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_qualified_resource() {
        let t = Target {
            group: "strata.io".into(),
            resource: "virtualmachines".into(),
            kind: "VirtualMachine".into(),
            name: "vm1".into(),
        };
        let s = ApiError::NotFound(t.clone()).status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["message"], "virtualmachines.strata.io \"vm1\" not found");
        assert_eq!(s["details"]["kind"], "virtualmachines");
        let s =
            ApiError::Invalid(t, vec![Cause::new("FieldValueInvalid", "spec.cpu", "bad")]).status();
        assert_eq!(
            s["message"],
            "VirtualMachine.strata.io \"vm1\" is invalid: spec.cpu: bad"
        );
        assert_eq!(s["details"]["causes"][0]["field"], "spec.cpu");
    }
}
