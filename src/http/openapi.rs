//! `GET /openapi.json`: the `OpenAPI` 3.1 document of this HTTP API, served
//! byte for byte as `src/http/openapi.json` is in the source (compiled in),
//! so the document a client fetches is the one the tests check against the
//! running server.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{self, HeaderValue};

/// The document, exactly as committed.
pub const OPENAPI_DOCUMENT: &str = include_str!("openapi.json");

/// The document as `application/json`.
pub(super) fn document() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(OPENAPI_DOCUMENT.as_bytes())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
