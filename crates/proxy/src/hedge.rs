//! A route's hedging (`[routes.hedge]`), ready for the data path.
//!
//! When an attempt has no response head after `after` (a fixed delay, or a percentile of the
//! latencies of the route's successful requests, from the first attempt's start to the winning
//! head), another attempt of the same request goes to
//! another endpoint, up to `max_extra` more, one `after` apart. The first response head that is
//! not a failure (by the upstream's `failure_status`, or a transport error) wins; the others are
//! cancelled: dropped, so that their connections are closed or their streams reset, and their
//! breakers and the adaptive limit learn nothing from them. A failing attempt leaves the race
//! while the others go on, since any of them may still succeed; when every attempt sent has
//! failed, the last failure is what the retry logic sees, as for an attempt without hedges.
//!
//! A percentile needs samples: until the route has seen 20 successful requests within the last
//! 30 s, a percentile `after` sends no hedge.
//!
//! Only a request that may be sent more than once is hedged: a method that `[routes.retry]`
//! `methods` allows (every gRPC call), with a body kept for replay. A hedge is an extra attempt,
//! as a retry is: it goes through the upstream's limits without waiting in their queue
//! (refused, no hedge is sent), to an endpoint this request has not tried yet, or else to one an
//! earlier attempt failed, never to one already racing (none left, no hedge) unless it is the
//! only endpoint of its tier (most often a name for several servers), never to a backup while a
//! primary serves, and only when the route's retry budget allows one more.

use rampart_config::{HedgeAfter, Route};
use rampart_policy::hedge::{Hedge, HedgeDelay};

use crate::Error;

/// `[routes.hedge]` of one route. Present only when the section is.
#[derive(Debug)]
pub(crate) struct Hedging {
    /// Shared by every request of the route: it learns the route's latency.
    hedge: Hedge,
}

impl Hedging {
    pub(crate) fn new(route: &Route) -> Result<Option<Hedging>, Error> {
        let Some(config) = &route.hedge else {
            return Ok(None);
        };
        let delay = match config.after {
            HedgeAfter::Delay(delay) => HedgeDelay::Fixed(delay),
            HedgeAfter::Percentile(p) => HedgeDelay::Percentile(p),
        };
        let hedge = Hedge::builder(delay)
            .max_extra(usize::try_from(config.max_extra).unwrap_or(usize::MAX))
            .build()
            .map_err(|err| Error::Invalid {
                path: format!("routes.{}.hedge", route.name),
                message: err.to_string(),
            })?;
        Ok(Some(Hedging { hedge }))
    }

    /// The policy that races an attempt against its hedges.
    pub(crate) fn policy(&self) -> &Hedge {
        &self.hedge
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rampart_config::Config;
    use rampart_policy::latency::LatencyRecorder;

    use super::*;

    fn hedging(section: &str) -> Option<Hedging> {
        let toml = format!(
            "[[routes]]\nupstream = \"app\"\n{section}\n\
             [upstreams.app]\nendpoints = [\"127.0.0.1:1\"]\n"
        );
        let config = Config::from_str(&toml, "test.toml").unwrap();
        Hedging::new(&config.routes[0]).unwrap()
    }

    #[test]
    fn off_unless_the_section_is_there() {
        assert!(hedging("").is_none());
    }

    #[tokio::test]
    async fn a_fixed_delay_is_used_as_it_is() {
        let hedging = hedging("[routes.hedge]\nafter = \"50ms\"").unwrap();
        assert_eq!(
            hedging.policy().current_delay(),
            Some(Duration::from_millis(50))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_percentile_follows_the_observed_latency() {
        let hedging = hedging("[routes.hedge]\nafter = \"p90\"\nmax_extra = 2").unwrap();
        let hedge = hedging.policy();
        // Not enough samples: no hedge at all.
        assert_eq!(hedge.current_delay(), None);

        // One slow attempt in twenty: the 90th percentile is the fast latency; it moves up to the
        // slow one when one in three of the next is slow (15 of 80 in the window).
        let race = |latency: u64| async move {
            let attempt = async move {
                tokio::time::sleep(Duration::from_millis(latency)).await;
                Ok::<_, ()>(())
            };
            hedge
                .race(rampart_policy::classify::ErrorsAreFailures, attempt, || {
                    None
                })
                .await
        };
        for i in 0..40 {
            race(if i % 20 == 19 { 200 } else { 20 }).await.unwrap();
        }
        let close = |delay: Option<Duration>, expected: u64| {
            let expected = Duration::from_millis(expected);
            let delay = delay.expect("enough samples");
            delay.abs_diff(expected) <= expected.mul_f64(LatencyRecorder::PRECISION)
        };
        assert!(
            close(hedge.current_delay(), 20),
            "{:?}",
            hedge.current_delay()
        );
        for i in 0..40 {
            race(if i % 3 == 2 { 200 } else { 20 }).await.unwrap();
        }
        assert!(
            close(hedge.current_delay(), 200),
            "{:?}",
            hedge.current_delay()
        );
    }
}
