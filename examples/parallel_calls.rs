//! A product page that calls four services, and still answers in time, in part, when some fail.
//!
//! Each request for the page calls three services in parallel (`catalog`, `reviews`,
//! `recommendations`) and a fourth, `pricing`, that needs the SKU in the catalog's answer. Each
//! call has the policies that suit the way its service fails, and a fallback of its own, so that
//! the page answers within its deadline whatever happens, and says which parts are stand-ins:
//!
//! | service | what goes wrong | policies | fallback |
//! |---|---|---|---|
//! | catalog | transient errors; a slow spell; a short outage | per-try timeout, retry with backoff and budget | the copy cached from an earlier answer (no page without one) |
//! | reviews | turns slow for a while | timeout | no reviews, and the page says so |
//! | recommendations | fails for a while, then recovers | circuit breaker over a timeout | bestsellers |
//! | pricing | turns slow | bulkhead over a timeout | the list price |
//!
//! A [`Deadline`] is set once, where the request comes in; every timeout inside waits for the
//! earlier of its own duration and the time left. `pricing`, which must wait for `catalog`, thus
//! gets only what the catalog left of the page's time. Pricing starts as soon as the catalog
//! answers, in parallel with the other two calls, not after all three.
//!
//! Every call goes through the direct API, `policy.call(|| async { .. })`, as it would around a
//! reqwest or sqlx call; two policies around one call give one level of error with
//! [`Error::flatten`]. Each part falls back with a `match` on the policy's error, keeping why: the
//! page must say which parts are stand-ins. (With a stand-in that does not depend on the request,
//! [`rampart_policy::fallback::Fallback::answer`] does the same: the answer, and whether and why
//! the fallback gave it.)
//!
//! The services are simulated in-process on real time, by a fault script keyed on the request
//! number (no randomness, and backoff and breaker jitter turned off), so every run tells the same
//! story: requests arrive every 20 ms and the run takes about three seconds. It prints one line per
//! page, the breaker's transitions as they happen (told through `CircuitBreaker::subscribe`), and
//! a summary; then it checks its own claims and exits non-zero if one does not hold.
//!
//! ```sh
//! cargo run -p rampart-policy --example parallel_calls
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::RangeInclusive;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rampart_policy::breaker::{CircuitBreaker, Reason, State, Transition};
use rampart_policy::bulkhead::Bulkhead;
use rampart_policy::retry::{Budget, Decision, ExponentialBackoff, Jitter, Retry, RetryClassify};
use rampart_policy::timeout::{Deadline, Timeout};
use rampart_policy::{Error, Rejected};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep};

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Requests for the page, one every [`ARRIVAL_EVERY`].
const REQUESTS: u32 = 140;
const ARRIVAL_EVERY: Duration = ms(20);
/// The whole page, every call and retry included, must be answered within this.
const PAGE_DEADLINE: Duration = ms(200);
/// Timers fire late on a loaded machine: the check on page latency allows this much past the
/// deadline. The misbehaving services take a second or more, so a page answered within it was
/// still protected.
const TIMER_SLACK: Duration = ms(250);

// The fault script, by request number. Request `n` arrives `n * 20 ms` into the run, so each range
// is also a period of time.
const REVIEWS_SLOW: RangeInclusive<u32> = 20..=44;
const RECOMMENDATIONS_DOWN: RangeInclusive<u32> = 40..=74;
const PRICING_SLOW: RangeInclusive<u32> = 90..=105;
/// The catalog's first two tries hang, and pricing is slow: the catalog's retries take most of
/// the page's time, and pricing is cut short by the deadline rather than by its own timeout.
const CATALOG_HANGS: RangeInclusive<u32> = 114..=115;
const CATALOG_DOWN: RangeInclusive<u32> = 125..=127;

/// One request in five meets a transient catalog error on its first try.
fn catalog_glitch(n: u32) -> bool {
    n % 5 == 2
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let page = Arc::new(ProductPage::new()?);

    // Transitions are told on the thread that caused them, in the middle of a call: hand them to
    // a task that prints them and keeps them for the summary.
    let (tell, mut told) = mpsc::unbounded_channel();
    page.recommendations_breaker
        .subscribe(move |transition: &Transition| {
            let _ = tell.send(*transition);
        });
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(t) = told.recv().await {
            println!(
                "           -- recommendations breaker: {} -> {} ({})",
                t.from,
                t.to,
                describe(&t.reason)
            );
            seen.push(t);
        }
        seen
    });

    println!(
        "Each part is `ok`, or why it fell back to its stand-in \
         (`timed out`: the call's own timeout; `deadline`: the page's)."
    );
    println!(
        "{:>4} {:>8}  {:<9} {:<20} {:<13} {:<16} pricing",
        "req", "latency", "page", "catalog", "reviews", "recommendations"
    );
    let started = Instant::now();
    let mut arrivals = tokio::time::interval(ARRIVAL_EVERY);
    let mut handlers = Vec::new();
    for n in 0..REQUESTS {
        arrivals.tick().await;
        let page = page.clone();
        // One task per request, as a server would run them.
        handlers.push(tokio::spawn(async move {
            let start = Instant::now();
            let answer = page.render(n).await;
            let served = Served {
                n,
                latency: start.elapsed(),
                answer,
            };
            println!("{served}");
            served
        }));
    }
    let mut served = Vec::new();
    for handler in handlers {
        served.push(handler.await?);
    }
    let run_took = started.elapsed();

    let stats = RunStats {
        breaker_now: page.recommendations_breaker.state(),
        catalog_retries: page.catalog_retry.retries_total(),
        catalog_retries_refused: page.catalog_retry.budget_exhausted_total(),
        recommendations_hit_while_down: page
            .services
            .recommendations_hit_while_down
            .load(Ordering::Relaxed),
    };
    // Dropping the page drops the breaker and its listener, which ends the watcher.
    drop(page);
    let transitions = watcher.await?;

    summarize(&served, run_took, &stats, &transitions);
    Ok(if check(&served, &stats, &transitions) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

// === the page ===

/// The product page's handler: the services it calls, and the policies around each call.
struct ProductPage {
    services: Services,
    catalog_try: Timeout,
    catalog_retry: Retry<UnlessOutOfTime>,
    catalog_cache: Mutex<HashMap<u32, Item>>,
    reviews_timeout: Timeout,
    recommendations_breaker: CircuitBreaker,
    recommendations_timeout: Timeout,
    pricing_bulkhead: Bulkhead,
    pricing_timeout: Timeout,
}

/// The page as its user sees it: each part the service's answer, or a stand-in.
struct Page {
    item: Part<Item>,
    catalog_tries: u32,
    price: Part<u32>,
    reviews: Part<Reviews>,
    recommendations: Part<Vec<&'static str>>,
}

/// The catalog gave no answer and no copy of the item was cached: there is no page to show.
#[derive(Debug)]
struct PageError(Why);

/// One part of a page: the service's answer, or a stand-in and why the answer is missing.
enum Part<T> {
    Live(T),
    StandIn(T, Why),
}

/// Why a part fell back. Refusals are told apart by their type, never by their message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Why {
    /// The service answered with an error.
    Failed(&'static str),
    /// The call's own timeout.
    TimedOut,
    /// The page's deadline: no time was left for the call.
    OutOfTime,
    BreakerOpen,
    BulkheadFull,
    /// Another policy said no.
    Refused,
}

impl ProductPage {
    fn new() -> Result<ProductPage, Box<dyn std::error::Error>> {
        // Jitter is off so that every run prints the same. A real service keeps it on (the
        // default), so that its instances do not retry and probe in lockstep.
        let backoff = ExponentialBackoff::new(ms(10), ms(40))?.with_jitter(Jitter::None);
        Ok(ProductPage {
            services: Services::default(),
            // The catalog answers in 10 ms; a try that takes 50 is not coming back.
            catalog_try: Timeout::new(ms(50)),
            // No page without the item: up to 3 tries, 10 then 20 ms apart, stopping when the
            // page is out of time; retries add at most 20% to the catalog's load (plus 10 a second).
            catalog_retry: Retry::new(3, backoff)?
                .with_budget(Budget::new(Duration::from_secs(10), 0.2, 10)?)
                .with_classify(UnlessOutOfTime),
            catalog_cache: Mutex::default(),
            // Reviews are a nice-to-have: never worth more than 80 ms of the page's time.
            reviews_timeout: Timeout::new(ms(80)),
            // After 3 failures in a row, stop calling for 150 ms (doubling up to 300 ms while it
            // stays down), then let 2 probes through; both must succeed to close again.
            recommendations_breaker: CircuitBreaker::builder()
                .consecutive_failures(3)
                .open_for(ms(150))
                .open_for_max(ms(300))
                .open_jitter(0.0)
                .half_open_probes(2)
                .build()?,
            // Inside the breaker, so that a hung call counts against the service.
            recommendations_timeout: Timeout::new(ms(100)),
            // At most 3 pricing calls at once; one that finds no place free is refused at once,
            // since waiting would spend the page's time.
            pricing_bulkhead: Bulkhead::builder(3).build()?,
            // Inside the bulkhead, so that a hung call gives its place back.
            pricing_timeout: Timeout::new(ms(120)),
        })
    }

    /// Answers request `n`, for the page of one product. (`n` is passed down only for the
    /// simulated services to read their fault script by.)
    async fn render(&self, n: u32) -> Result<Page, PageError> {
        let product = n % PRODUCTS.len() as u32;
        // Set once: every timeout below waits no longer than what is left of the page's time.
        Deadline::after(PAGE_DEADLINE)
            .scope(async {
                let (item_and_price, reviews, recommendations) = tokio::join!(
                    self.item_and_price(product, n),
                    self.reviews(product, n),
                    self.recommendations(product, n),
                );
                let (item, catalog_tries, price) = item_and_price?;
                Ok(Page {
                    item,
                    catalog_tries,
                    price,
                    reviews,
                    recommendations,
                })
            })
            .await
    }

    /// The item, then its price: pricing needs the item's SKU.
    async fn item_and_price(
        &self,
        product: u32,
        n: u32,
    ) -> Result<(Part<Item>, u32, Part<u32>), PageError> {
        let (item, tries) = self.item(product, n).await?;
        let price = self.price(item.value(), n).await;
        Ok((item, tries, price))
    }

    /// The catalog's item, retried; else the copy cached from an earlier answer.
    async fn item(&self, product: u32, n: u32) -> Result<(Part<Item>, u32), PageError> {
        let (services, catalog_try) = (&self.services, &self.catalog_try);
        let mut attempt = 0;
        let (answer, stats) = self
            .catalog_retry
            .call_with_stats(move || {
                attempt += 1;
                catalog_try.call(move || services.catalog(product, n, attempt))
            })
            .await;
        let mut cache = self
            .catalog_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let item = match answer {
            Ok(item) => {
                cache.insert(product, item.clone());
                Part::Live(item)
            }
            Err(err) => match cache.get(&product) {
                Some(copy) => Part::StandIn(copy.clone(), why(&err)),
                None => return Err(PageError(why(&err))),
            },
        };
        Ok((item, stats.attempts))
    }

    async fn reviews(&self, product: u32, n: u32) -> Part<Reviews> {
        let answer = self
            .reviews_timeout
            .call(|| self.services.reviews(product, n))
            .await;
        Part::or_else(answer, Reviews::none)
    }

    async fn recommendations(&self, product: u32, n: u32) -> Part<Vec<&'static str>> {
        let answer = self
            .recommendations_breaker
            .call(|| {
                self.recommendations_timeout
                    .call(|| self.services.recommendations(product, n))
            })
            .await
            // One level of error for the two policies: the breaker's refusal or the timeout's.
            .map_err(Error::flatten);
        Part::or_else(answer, bestsellers)
    }

    async fn price(&self, item: &Item, n: u32) -> Part<u32> {
        let answer = self
            .pricing_bulkhead
            .call(|| {
                self.pricing_timeout
                    .call(|| self.services.pricing(&item.sku, n))
            })
            .await
            .map_err(Error::flatten);
        Part::or_else(answer, || item.list_price)
    }
}

/// Retries every failure but running out of the page's time: with no time left, another try
/// would be refused at once anyway, after a backoff the page cannot afford.
#[derive(Clone, Copy, Debug)]
struct UnlessOutOfTime;

impl<T, E> RetryClassify<T, Error<E>> for UnlessOutOfTime {
    fn decide(&self, result: &Result<T, Error<E>>) -> Decision {
        match result {
            Ok(_) | Err(Error::Rejected(Rejected::DeadlineExceeded(_))) => Decision::Done,
            Err(_) => Decision::Retry,
        }
    }
}

// === impl Part ===

impl<T> Part<T> {
    /// The answer of a call through the policies, or `stand_in()` when there is none.
    fn or_else(answer: Result<T, Error<ServiceError>>, stand_in: impl FnOnce() -> T) -> Part<T> {
        match answer {
            Ok(value) => Part::Live(value),
            Err(err) => Part::StandIn(stand_in(), why(&err)),
        }
    }

    fn value(&self) -> &T {
        match self {
            Part::Live(value) | Part::StandIn(value, _) => value,
        }
    }

    fn stand_in(&self) -> Option<Why> {
        match self {
            Part::Live(_) => None,
            Part::StandIn(_, why) => Some(*why),
        }
    }
}

fn why(err: &Error<ServiceError>) -> Why {
    match err {
        Error::Inner(ServiceError(message)) => Why::Failed(message),
        Error::Rejected(Rejected::Timeout(_)) => Why::TimedOut,
        Error::Rejected(Rejected::DeadlineExceeded(_)) => Why::OutOfTime,
        Error::Rejected(Rejected::BreakerOpen(_)) => Why::BreakerOpen,
        Error::Rejected(Rejected::BulkheadFull(_)) => Why::BulkheadFull,
        Error::Rejected(_) => Why::Refused,
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Why::Failed(message) => message,
            Why::TimedOut => "timed out",
            Why::OutOfTime => "deadline",
            Why::BreakerOpen => "breaker open",
            Why::BulkheadFull => "bulkhead full",
            Why::Refused => "refused",
        })
    }
}

// === impl Page ===

impl Page {
    /// Each part's name, and why it fell back if it did.
    fn parts(&self) -> [(&'static str, Option<Why>); 4] {
        [
            ("catalog", self.item.stand_in()),
            ("reviews", self.reviews.stand_in()),
            ("recommendations", self.recommendations.stand_in()),
            ("pricing", self.price.stand_in()),
        ]
    }

    fn stand_ins(&self) -> usize {
        self.parts().iter().filter(|(_, why)| why.is_some()).count()
    }
}

impl fmt::Display for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let item = self.item.value();
        write!(f, "  | {} ({})", item.name, item.sku)?;
        if self.item.stand_in().is_some() {
            write!(f, " [saved copy: details may be out of date]")?;
        }
        match &self.price {
            Part::Live(cents) => writeln!(f, ": {}", Dollars(*cents))?,
            Part::StandIn(cents, _) => writeln!(
                f,
                ": {} (list price; today's offers could not be loaded)",
                Dollars(*cents)
            )?,
        }
        match &self.reviews {
            Part::Live(reviews) => writeln!(
                f,
                "  | {:.1} stars from {} reviews",
                reviews.stars, reviews.count
            )?,
            Part::StandIn(..) => writeln!(f, "  | Reviews are unavailable right now.")?,
        }
        match &self.recommendations {
            Part::Live(names) => write!(f, "  | Customers also bought: {}", names.join(", ")),
            Part::StandIn(names, _) => write!(f, "  | Our bestsellers: {}", names.join(", ")),
        }
    }
}

/// One request, as the server saw it.
struct Served {
    n: u32,
    latency: Duration,
    answer: Result<Page, PageError>,
}

impl fmt::Display for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>4} {:>5} ms  ", self.n, self.latency.as_millis())?;
        let page = match &self.answer {
            Ok(page) => page,
            Err(PageError(why)) => {
                return write!(f, "FAILED    catalog: {why}, and no cached copy");
            }
        };
        let catalog = match (&page.item, page.catalog_tries) {
            (Part::Live(_), 1) => "ok".to_string(),
            (Part::Live(_), tries) => format!("ok, {tries} tries"),
            (Part::StandIn(_, why), _) => format!("cached: {why}"),
        };
        let cell = |why: Option<Why>| why.map_or("ok".to_string(), |why| why.to_string());
        write!(
            f,
            "{:<9} {catalog:<20} {:<13} {:<16} {}",
            if page.stand_ins() == 0 {
                "complete"
            } else {
                "partial"
            },
            cell(page.reviews.stand_in()),
            cell(page.recommendations.stand_in()),
            cell(page.price.stand_in()),
        )
    }
}

// === the services, simulated ===

/// A service's error, as its client library would return it.
#[derive(Debug)]
struct ServiceError(&'static str);

#[derive(Clone, Debug)]
struct Item {
    name: &'static str,
    sku: String,
    list_price: u32,
}

#[derive(Debug)]
struct Reviews {
    stars: f32,
    count: u32,
}

const PRODUCTS: [&str; 8] = [
    "desk lamp",
    "office chair",
    "standing desk",
    "monitor arm",
    "keyboard",
    "footrest",
    "cable tray",
    "whiteboard",
];

/// The four services the page calls. What they do is scripted by request number (see the fault
/// script at the top), never random, so that every run tells the same story.
#[derive(Default)]
struct Services {
    /// Calls that reached recommendations while it was down.
    recommendations_hit_while_down: AtomicU32,
}

impl Services {
    async fn catalog(&self, product: u32, n: u32, attempt: u32) -> Result<Item, ServiceError> {
        if CATALOG_DOWN.contains(&n) {
            sleep(ms(5)).await;
            return Err(ServiceError("unavailable"));
        }
        if CATALOG_HANGS.contains(&n) && attempt <= 2 {
            sleep(Duration::from_secs(1)).await;
        } else if catalog_glitch(n) && attempt == 1 {
            sleep(ms(5)).await;
            return Err(ServiceError("connection reset"));
        }
        sleep(ms(10)).await;
        Ok(Item {
            name: PRODUCTS[product as usize],
            sku: format!("SKU-{product:04}"),
            list_price: list_price(product),
        })
    }

    async fn reviews(&self, product: u32, n: u32) -> Result<Reviews, ServiceError> {
        let slow = REVIEWS_SLOW.contains(&n);
        sleep(if slow { Duration::from_secs(2) } else { ms(15) }).await;
        Ok(Reviews {
            stars: 3.8 + 0.15 * product as f32,
            count: 40 + 13 * product,
        })
    }

    async fn recommendations(
        &self,
        product: u32,
        n: u32,
    ) -> Result<Vec<&'static str>, ServiceError> {
        sleep(ms(20)).await;
        if RECOMMENDATIONS_DOWN.contains(&n) {
            self.recommendations_hit_while_down
                .fetch_add(1, Ordering::Relaxed);
            return Err(ServiceError("internal error"));
        }
        let others = (1..=3).map(|i| PRODUCTS[(product as usize + i) % PRODUCTS.len()]);
        Ok(others.collect())
    }

    /// Today's price of the item with this SKU: 10% off its list price.
    async fn pricing(&self, sku: &str, n: u32) -> Result<u32, ServiceError> {
        let slow = PRICING_SLOW.contains(&n) || CATALOG_HANGS.contains(&n);
        sleep(if slow { Duration::from_secs(1) } else { ms(15) }).await;
        let product = sku
            .strip_prefix("SKU-")
            .and_then(|number| number.parse().ok())
            .ok_or(ServiceError("unknown SKU"))?;
        Ok(list_price(product) / 10 * 9)
    }
}

fn list_price(product: u32) -> u32 {
    4_990 + 2_500 * product
}

fn bestsellers() -> Vec<&'static str> {
    vec![PRODUCTS[1], PRODUCTS[2], PRODUCTS[4]]
}

impl Reviews {
    fn none() -> Reviews {
        Reviews {
            stars: 0.0,
            count: 0,
        }
    }
}

struct Dollars(u32);

impl fmt::Display for Dollars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}.{:02}", self.0 / 100, self.0 % 100)
    }
}

// === the summary and the checks ===

/// What the run's policies and services counted.
struct RunStats {
    breaker_now: State,
    catalog_retries: u64,
    catalog_retries_refused: u64,
    recommendations_hit_while_down: u32,
}

fn describe(reason: &Reason) -> String {
    match reason {
        Reason::ConsecutiveFailures(n) => format!("{n} failures in a row"),
        Reason::FailureRate { rate, calls } => {
            format!("{:.0}% of {calls} calls failed", rate * 100.0)
        }
        Reason::OpenElapsed => "open period over: probing".to_string(),
        Reason::ProbeFailed => "a probe failed".to_string(),
        Reason::ProbesSucceeded => "every probe succeeded".to_string(),
        other => format!("{other:?}"),
    }
}

fn summarize(served: &[Served], run_took: Duration, stats: &RunStats, transitions: &[Transition]) {
    let pages: Vec<&Page> = served
        .iter()
        .filter_map(|s| s.answer.as_ref().ok())
        .collect();
    let complete = pages.iter().filter(|p| p.stand_ins() == 0).count();
    let mut latencies: Vec<Duration> = served.iter().map(|s| s.latency).collect();
    latencies.sort();

    println!();
    println!(
        "{} requests in {:.1} s: {complete} complete pages, {} partial, {} failed",
        served.len(),
        run_took.as_secs_f64(),
        pages.len() - complete,
        served.len() - pages.len(),
    );
    println!(
        "page latency: p50 {} ms, max {} ms (deadline {} ms)",
        latencies[latencies.len() / 2].as_millis(),
        latencies[latencies.len() - 1].as_millis(),
        PAGE_DEADLINE.as_millis(),
    );

    println!("stand-ins by part, and why:");
    for (i, part) in ["catalog", "reviews", "recommendations", "pricing"]
        .iter()
        .enumerate()
    {
        let mut reasons: BTreeMap<Why, u32> = BTreeMap::new();
        for page in &pages {
            if let Some(why) = page.parts()[i].1 {
                *reasons.entry(why).or_default() += 1;
            }
        }
        let total: u32 = reasons.values().sum();
        let detail: Vec<String> = reasons.iter().map(|(w, n)| format!("{w} {n}")).collect();
        println!("  {part:<16} {total:>3}  {}", detail.join(", "));
    }
    println!(
        "catalog: {} retries, {} refused by the retry budget",
        stats.catalog_retries, stats.catalog_retries_refused
    );
    println!(
        "recommendations: {} of the {} requests made while it was down reached it",
        stats.recommendations_hit_while_down,
        RECOMMENDATIONS_DOWN.count(),
    );
    let mut states = vec![State::Closed.to_string()];
    states.extend(transitions.iter().map(|t| t.to.to_string()));
    println!(
        "breaker: {} (now {})",
        states.join(" -> "),
        stats.breaker_now
    );

    if let Some(worst) = served
        .iter()
        .filter_map(|s| Some((s.n, s.answer.as_ref().ok()?)))
        .max_by_key(|(n, page)| (page.stand_ins(), std::cmp::Reverse(*n)))
    {
        println!("request {} as its user saw it:\n{}", worst.0, worst.1);
    }
}

/// Checks the run's claims, printing each; true when all hold.
fn check(served: &[Served], stats: &RunStats, transitions: &[Transition]) -> bool {
    let page = |n: u32| served.iter().find(|s| s.n == n)?.answer.as_ref().ok();
    let pages_in = |range: RangeInclusive<u32>| range.map(page).collect::<Option<Vec<_>>>();
    let max_latency = served.iter().map(|s| s.latency).max().unwrap_or_default();

    let claims = [
        (
            "no request failed outright",
            served.iter().all(|s| s.answer.is_ok()),
        ),
        (
            "every page answered within its deadline (allowing for late timers)",
            max_latency <= PAGE_DEADLINE + TIMER_SLACK,
        ),
        (
            "retries absorbed the catalog's transient errors",
            stats.catalog_retries > 0
                && served
                    .iter()
                    .filter(|s| catalog_glitch(s.n) && !CATALOG_DOWN.contains(&s.n))
                    .all(|s| matches!(&s.answer, Ok(p) if matches!(p.item, Part::Live(_)))),
        ),
        (
            "while reviews was slow, pages went without it after its own 80 ms timeout",
            pages_in(REVIEWS_SLOW).is_some_and(|pages| {
                pages
                    .iter()
                    .all(|p| p.reviews.stand_in() == Some(Why::TimedOut))
            }),
        ),
        (
            "while recommendations was down, pages came back partial, the breaker answering",
            pages_in(RECOMMENDATIONS_DOWN).is_some_and(|pages| {
                pages
                    .iter()
                    .any(|p| p.recommendations.stand_in() == Some(Why::BreakerOpen))
            }),
        ),
        (
            "the breaker spared recommendations: under half of the requests reached it",
            stats.recommendations_hit_while_down * 2 < RECOMMENDATIONS_DOWN.count() as u32,
        ),
        (
            "the breaker opened, and closed again once recommendations recovered",
            transitions.iter().any(|t| t.to == State::Open)
                && transitions.last().map(|t| t.to) == Some(State::Closed)
                && stats.breaker_now == State::Closed,
        ),
        (
            "pricing after a slow catalog got only the page's time left, not its own timeout",
            pages_in(CATALOG_HANGS).is_some_and(|pages| {
                pages
                    .iter()
                    .all(|p| p.price.stand_in() == Some(Why::OutOfTime))
            }),
        ),
        (
            "while the catalog was down, pages showed the cached item",
            pages_in(CATALOG_DOWN)
                .is_some_and(|pages| pages.iter().all(|p| matches!(p.item, Part::StandIn(..)))),
        ),
    ];

    println!("checks:");
    for (claim, held) in &claims {
        println!("  [{}] {claim}", if *held { "ok" } else { "FAILED" });
    }
    claims.iter().all(|(_, held)| *held)
}
