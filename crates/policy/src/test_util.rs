//! Helpers shared by the unit tests.

use std::time::Duration;

use tower_test::mock;

/// The next request a mock service receives; fails the test, rather than hanging it, when none
/// comes (on the paused clock the timeout fires as soon as nothing else can happen).
pub(crate) async fn next_request<Req, Rsp>(
    handle: &mut mock::Handle<Req, Rsp>,
) -> (Req, mock::SendResponse<Rsp>) {
    tokio::time::timeout(Duration::from_secs(60), handle.next_request())
        .await
        .expect("the inner service received no request")
        .expect("every handle to the inner service was dropped")
}
