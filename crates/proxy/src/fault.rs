//! Fault injection (`[routes.fault]`): delays and aborts on purpose, to rehearse failures.
//!
//! It sits outermost, right after the route match and the deadline (docs/architecture.md), so an
//! injected delay eats into the request's deadline like a slow network would, and an abort is
//! answered without touching the upstream, its breaker or the retry budget. Delay and abort are
//! drawn apart, each by its own percentage, and a request drawn for both is delayed, then
//! aborted (as Envoy's fault filter does): a dependency that fails slowly, the kind that piles
//! requests up, is rehearsed so.

use std::time::Duration;

use http::StatusCode;
use rampart_config::Fault as FaultConfig;
use rampart_http::GrpcCode;
use rampart_policy::rng::Rng;

use crate::Error;

/// One route's fault injection.
#[derive(Debug)]
pub(crate) struct Fault {
    delay: Option<(Duration, f64)>,
    abort: Option<(Abort, f64)>,
    rng: Rng,
}

/// What an aborted request is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Abort {
    /// A plain HTTP request's status: `abort_status`, 503 when only `abort_grpc_status` is set.
    pub(crate) status: StatusCode,
    /// A gRPC call's: `abort_grpc_status`, UNAVAILABLE when only `abort_status` is set.
    pub(crate) grpc: GrpcCode,
}

/// What fault injection does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Injected {
    /// Wait this long before forwarding.
    pub(crate) delay: Option<Duration>,
    /// Answer so instead of forwarding.
    pub(crate) abort: Option<Abort>,
}

impl Fault {
    /// The route's fault injection, drawing from `rng`; `path` names the table in errors.
    pub(crate) fn new(config: &FaultConfig, rng: Rng, path: &str) -> Result<Fault, Error> {
        let status = match config.abort_status {
            Some(status) => Some(StatusCode::from_u16(status).map_err(|_| Error::Invalid {
                path: format!("{path}.abort_status"),
                message: format!("{status} is no HTTP status"),
            })?),
            None => None,
        };
        // Either key aborts: a gRPC-only route names the code it rehearses, and a plain HTTP
        // request on it still gets the abort's usual 503.
        let abort = (status.is_some() || config.abort_grpc_status.is_some()).then(|| {
            let abort = Abort {
                status: status.unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                grpc: config.abort_grpc_status.unwrap_or(GrpcCode::Unavailable),
            };
            (abort, percent(config.abort_percent))
        });
        Ok(Fault {
            delay: config
                .delay
                .map(|delay| (delay, percent(config.delay_percent))),
            abort,
            rng,
        })
    }

    /// Draws what happens to the next request: its delay, then its abort, each by its own
    /// percentage, so that `delay_percent` of the requests are delayed whether or not they are
    /// then aborted.
    pub(crate) fn draw(&self) -> Injected {
        let delay = self
            .delay
            .and_then(|(delay, p)| self.rng.chance(p).then_some(delay));
        let abort = self
            .abort
            .and_then(|(abort, p)| self.rng.chance(p).then_some(abort));
        Injected { delay, abort }
    }
}

fn percent(value: f64) -> f64 {
    value.clamp(0.0, 100.0) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABORTED: Option<Abort> = Some(Abort {
        status: StatusCode::SERVICE_UNAVAILABLE,
        grpc: GrpcCode::Unavailable,
    });

    fn fault(delay_percent: f64, abort_percent: f64, rng: Rng) -> Fault {
        let config = FaultConfig {
            delay: Some(Duration::from_millis(300)),
            delay_percent,
            abort_status: Some(503),
            abort_grpc_status: None,
            abort_percent,
        };
        Fault::new(&config, rng, "routes[0].fault").unwrap()
    }

    #[test]
    fn a_fraction_of_a_percent_is_drawn_as_such() {
        // 0.5 %: a draw under 0.005 aborts, one over it does not.
        assert_eq!(fault(0.0, 0.5, Rng::fixed(0.0049)).draw().abort, ABORTED);
        assert_eq!(fault(0.0, 0.5, Rng::fixed(0.0051)).draw().abort, None);
    }

    #[test]
    fn full_percentages_always_and_zero_never() {
        // The highest draw still falls under 100%, the lowest never under 0%.
        let always = fault(100.0, 100.0, Rng::fixed(0.999));
        assert_eq!(always.draw().abort, ABORTED);
        let never = fault(0.0, 0.0, Rng::fixed(0.0));
        assert_eq!(
            never.draw(),
            Injected {
                delay: None,
                abort: None
            }
        );
    }

    #[test]
    fn the_share_is_compared_with_the_draw() {
        // 0.3 is under 50% and over 20%.
        let delayed = fault(50.0, 20.0, Rng::fixed(0.3)).draw();
        assert_eq!(delayed.abort, None);
        assert_eq!(delayed.delay, Some(Duration::from_millis(300)));
        let aborted = fault(20.0, 50.0, Rng::fixed(0.3)).draw();
        assert_eq!(aborted.abort, ABORTED);
        assert_eq!(aborted.delay, None);
    }

    #[test]
    fn a_request_is_drawn_for_its_delay_and_its_abort_apart() {
        // The delay's draw first, then the abort's: 0.1 delays at 50%, 0.6 does not abort at
        // 50%; 0.2 delays and 0.4 aborts.
        let draws = [0.1, 0.6, 0.2, 0.4];
        let next = std::sync::atomic::AtomicUsize::new(0);
        let rng = Rng::from_fn(move || {
            draws[next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % draws.len()]
        });
        let half = fault(50.0, 50.0, rng);
        let delayed = Some(Duration::from_millis(300));
        assert_eq!(
            half.draw(),
            Injected {
                delay: delayed,
                abort: None
            }
        );
        assert_eq!(
            half.draw(),
            Injected {
                delay: delayed,
                abort: ABORTED
            }
        );
        // Both at 100%: every request is delayed, then aborted.
        let both = fault(100.0, 100.0, Rng::fixed(0.999)).draw();
        assert_eq!(both.delay, delayed);
        assert_eq!(both.abort, ABORTED);
    }

    #[test]
    fn either_status_aborts_and_the_other_keeps_its_default() {
        let with = |abort_status, abort_grpc_status| {
            let config = FaultConfig {
                delay: None,
                delay_percent: 0.0,
                abort_status,
                abort_grpc_status,
                abort_percent: 100.0,
            };
            Fault::new(&config, Rng::fixed(0.5), "routes[0].fault")
                .unwrap()
                .draw()
                .abort
        };
        assert_eq!(
            with(None, Some(GrpcCode::ResourceExhausted)),
            Some(Abort {
                status: StatusCode::SERVICE_UNAVAILABLE,
                grpc: GrpcCode::ResourceExhausted
            })
        );
        assert_eq!(
            with(Some(429), Some(GrpcCode::DeadlineExceeded)),
            Some(Abort {
                status: StatusCode::TOO_MANY_REQUESTS,
                grpc: GrpcCode::DeadlineExceeded
            })
        );
        assert_eq!(
            with(Some(500), None),
            Some(Abort {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                grpc: GrpcCode::Unavailable
            })
        );
        assert_eq!(with(None, None), None);
    }

    #[test]
    fn draws_follow_the_rng() {
        let draws = [0.9, 0.1, 0.6, 0.4];
        let next = std::sync::atomic::AtomicUsize::new(0);
        let rng = Rng::from_fn(move || {
            draws[next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % draws.len()]
        });
        let fault = Fault::new(
            &FaultConfig {
                delay: None,
                delay_percent: 0.0,
                abort_status: Some(500),
                abort_grpc_status: None,
                abort_percent: 50.0,
            },
            rng,
            "routes[0].fault",
        )
        .unwrap();
        let aborted: Vec<bool> = (0..4).map(|_| fault.draw().abort.is_some()).collect();
        assert_eq!(aborted, [false, true, false, true]);
    }
}
