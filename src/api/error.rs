//! JSON errors: `{"error": "...", "field": "..."}` with a status code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    /// The request field at fault (`body` when the JSON itself is broken).
    pub field: Option<String>,
    /// Who can answer instead (an environment another instance holds).
    pub holder: Option<serde_json::Value>,
}

impl ApiError {
    pub fn bad_field(field: &str, error: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: error.into(),
            field: Some(field.to_string()),
            holder: None,
        }
    }

    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            error: "missing or invalid bearer token".into(),
            field: None,
            holder: None,
        }
    }

    pub fn status(status: StatusCode, error: impl Into<String>, field: Option<&str>) -> Self {
        ApiError {
            status,
            error: error.into(),
            field: field.map(str::to_string),
            holder: None,
        }
    }

    /// Decodes a JSON body into `T`, naming the field at fault: the path for
    /// type errors (`quantiles[1]`, `job.vcpus`), the field for missing or
    /// unknown ones, `body` for syntax errors.
    pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let v: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.to_string();
            if inner.is_syntax() || inner.is_eof() {
                return ApiError::bad_field("body", format!("invalid JSON: {msg}"));
            }
            let field = crate::policy::backticked_after(&msg, "missing field `")
                .or_else(|| crate::policy::backticked_after(&msg, "unknown field `"))
                .map(|f| {
                    if path == "." || path == f || path.ends_with(&format!(".{f}")) {
                        if path == "." {
                            f
                        } else {
                            path.clone()
                        }
                    } else {
                        format!("{path}.{f}")
                    }
                })
                .unwrap_or_else(|| if path == "." { "body".into() } else { path });
            ApiError::bad_field(&field, msg)
        })?;
        de.end()
            .map_err(|e| ApiError::bad_field("body", format!("invalid JSON: {e}")))?;
        Ok(v)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": self.error, "field": self.field});
        if let Some(h) = self.holder {
            body["holder"] = h;
        }
        (self.status, Json(body)).into_response()
    }
}
