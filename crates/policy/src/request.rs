//! Copies of a tower request, for the services that send one more than once: a retry, a hedge,
//! a pipeline.

/// Makes the copy of a request that a retry or a hedge sends.
///
/// Implemented by [`Cloned`] (the request's own `Clone`) and by every
/// `Fn(&Req) -> Option<Req>`, which may decline: a request it cannot copy (say, one with a
/// streaming body) is sent once, neither retried nor hedged.
pub trait CloneRequest<Req> {
    /// A copy of `request` to send again, if it can be copied.
    fn clone_request(&self, request: &Req) -> Option<Req>;
}

/// Copies requests with their `Clone` implementation; the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cloned;

impl<Req: Clone> CloneRequest<Req> for Cloned {
    #[inline]
    fn clone_request(&self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

impl<Req, F> CloneRequest<Req> for F
where
    F: Fn(&Req) -> Option<Req>,
{
    #[inline]
    fn clone_request(&self, request: &Req) -> Option<Req> {
        self(request)
    }
}
