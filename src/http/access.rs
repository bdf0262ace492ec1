//! Which routes are public and which are admin routes, and the admin
//! token check on the admin routes (`--admin-token-file`).
//!
//! The classification is a property of the route, so the check applies on
//! whichever socket serves it. Public routes never ask for a token.

use hyper::HeaderMap;

use super::AppState;
use super::errors::ApiError;
use crate::admin_token::Verdict;
use crate::metrics::Route;

/// Who a route is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Anyone who can reach the socket: the health check and the webhook
    /// POST (and unknown paths, which answer 404 and show nothing).
    Public,
    /// The operator: transactions, listings, metrics, the API document.
    /// With `--admin-token-file`, they need the bearer token.
    Admin,
}

/// The one place that says which routes are admin routes. Exhaustive on
/// purpose: a new route does not compile until it is classified here.
#[must_use]
pub fn exposure(route: Route) -> Exposure {
    match route {
        Route::Health | Route::Webhooks | Route::Unknown => Exposure::Public,
        Route::Transaction
        | Route::Transactions
        | Route::Metrics
        | Route::OpenApi
        | Route::Attempts
        | Route::Redeliver
        | Route::Redeliveries
        | Route::Redelivery => Exposure::Admin,
    }
}

/// `Ok` if the request may use `route`: a public route, no token
/// configured, or a listed bearer token presented.
pub(super) fn authorize(
    state: &AppState,
    route: Route,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    if exposure(route) == Exposure::Public {
        return Ok(());
    }
    let Some(tokens) = &state.admin_tokens else {
        return Ok(());
    };
    match tokens.current().check(headers) {
        Verdict::Allowed => Ok(()),
        Verdict::Missing => Err(ApiError::Unauthorized(
            "admin routes need an Authorization: Bearer <admin token> header",
        )),
        Verdict::WrongScheme => Err(ApiError::Unauthorized(
            "admin routes need the Bearer authorization scheme",
        )),
        Verdict::WrongToken => Err(ApiError::Unauthorized("the bearer token is not valid")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_health_and_the_webhook_post_are_public() {
        for route in [Route::Health, Route::Webhooks, Route::Unknown] {
            assert_eq!(exposure(route), Exposure::Public, "{route:?}");
        }
        for route in [
            Route::Transaction,
            Route::Transactions,
            Route::Metrics,
            Route::OpenApi,
            Route::Attempts,
            Route::Redeliver,
            Route::Redeliveries,
            Route::Redelivery,
        ] {
            assert_eq!(exposure(route), Exposure::Admin, "{route:?}");
        }
    }
}
