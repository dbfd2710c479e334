//! The per-route stack: what a route does to a request between the match and the upstream.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, Request, Response};
use hyper::body::Body as _;
use rampart_config::Route;
use rampart_http::classify::{RetryHint, classify_response, grpc_status, is_grpc, retry_hint};
use rampart_http::deadline::Outgoing;
use rampart_http::{Attempt, Reason, TransportError};
use rampart_policy::Outcome;
use rampart_policy::clock::recent_nanos;
use rampart_policy::retry::MIN_ATTEMPT;
use rampart_policy::rng::Rng;
use tokio::time::Instant;

use crate::body::{
    BodyFault, ClientBodyFault, DeadlineBody, OutcomeAtEnd, RequestBody, SignalEnd, UpstreamBody,
};
use crate::connections::{PooledBody, SendError};
use crate::fallback::Fallback;
use crate::fault::Fault;
use crate::h1;
use crate::hedge::Hedging;
use crate::limits::Slot;
use crate::metrics::{Failure, Metrics, RouteMetrics};
use crate::outbox::Outbox;
use crate::retry::{Replay, Retry, Scope, answered};
use crate::turn;
use crate::upstream::{Avoid, Picked, Pool};

/// One route's way to its upstream, outermost first:
///
/// - fault injection (`[routes.fault]`), right after the route match and the deadline: an
///   injected delay counts against the deadline, an abort answers after any delay drawn with it (see [`Fault`]);
/// - fallback (`[routes.fallback]`): around everything below, so it can answer whatever gave up
///   there, or an upstream's 5xx (see [`Fallback`]);
/// - the total timeout: the request's deadline (the route's `timeout`, capped by the client's
///   deadline header), set by the caller, bounds every attempt and every backoff sleep together,
///   so retries cannot outlive the client's patience;
/// - retry (`[routes.retry]`): above the balancer, so a retry goes to an endpoint the request has
///   not tried yet while one may take it (Envoy's `previous_hosts`); its budget, shared by the
///   route, keeps retries from turning an outage into a storm; the body is copied for it as it
///   streams to the first attempt, up to `max_replay_body` (a body that outgrows it is sent once
///   and not retried);
/// - hedge (`[routes.hedge]`): below retry, so that each attempt of the retry loop may be
///   hedged and a race that every attempt lost is judged by the retry like a single failed
///   attempt; above the limits and the balancer, so that a hedge is admitted by the upstream's
///   limits like any attempt and goes to an endpoint not tried yet (see [`Hedging`]);
/// - the upstream's limits (`[upstreams.NAME.limits]`, see [`Limits`](crate::limits::Limits)):
///   the rate limit, then the concurrency limit with its pending queue, behind a look at the
///   pool ([`Pool::may_admit`]) that answers an attempt no endpoint may take as the pick would,
///   so that a token and a slot go only to attempts that are sent. docs/architecture.md's
///   request path puts the concurrency limit below the breaker gate; it is taken before the
///   pick instead, because it is the upstream's and not an endpoint's, and because an attempt
///   waiting in the queue must not hold an endpoint's half-open probe meanwhile, nor go to an
///   endpoint picked before the wait. What that order is for still holds: a refusal never
///   reaches a breaker, and a slot is held only as long as the attempt (to its response head);
/// - balancer ([`Pool::pick`]): `balance` (p2c-ewma by default) among the endpoints that are
///   healthy and whose breaker admits, backups only when no primary may; the attempt counts in
///   its endpoint's load until its outcome is recorded;
/// - per endpoint: the breaker's permit, which records the attempt's classified outcome: from the
///   response head, and again at the body's end, the permit travelling with the body
///   ([`OutcomeAtEnd`]): a gRPC response whose head has no `grpc-status` (the status follows
///   the body) by its trailers, and any other good answer by whether its body ends whole; a
///   retry decides from the head alone, so a failure in the trailers or the body reaches the
///   breaker but is never retried (the response has gone to the client by then);
/// - per-try timeout (`per_try_timeout`): innermost, so a hung attempt is cut short, counted as
///   a failure by the breaker and the adaptive limit, and retried as `timeout`;
/// - the pooled connection.
///
/// Fault injection and fallback are applied by the caller (`forward.rs`), around
/// [`Stack::call`]; so is the count of each answer in the route's metrics. The stack counts the
/// retries it sends, the ones the budget refuses, and the hedges it sends.
///
/// An async route (`[routes.async]`) stores its requests in the outbox instead, right after
/// fault injection and before the fallback, and its delivery loop calls the stack later (see
/// [`crate::outbox`]).
#[derive(Debug)]
pub(crate) struct Stack {
    /// The route's name.
    name: String,
    /// The route's series: the caller counts each answer, the stack each retry and hedge.
    metrics: RouteMetrics,
    fault: Option<Fault>,
    fallback: Option<Fallback>,
    timeout: Duration,
    per_try_timeout: Option<Duration>,
    retry: Option<Retry>,
    hedging: Option<Hedging>,
    upstream: Arc<Pool>,
    /// The outbox, for an async route (`[routes.async]`): the caller stores its requests there
    /// instead of calling the stack, and the route's delivery loop calls it later.
    outbox: Option<Arc<Outbox>>,
    /// `[routes.async] concurrency`.
    async_concurrency: usize,
}

/// What became of the last attempt, to be answered when no other follows.
#[expect(
    clippy::large_enum_variant,
    reason = "a response is what most attempts end with: boxing it would allocate for every \
              request to spare the rare error a few bytes of stack"
)]
enum Last {
    Response(Response<UpstreamBody>, Outcome),
    Error(Reason),
}

impl Stack {
    /// The stack of `route`, the `index`th in the file, to `upstream`, its series made in
    /// `metrics`; fault injection draws from `rng`; an async route stores its requests in
    /// `outbox`, which the proxy must have been started with.
    pub(crate) fn new(
        route: &Route,
        index: usize,
        upstream: Arc<Pool>,
        rng: &Rng,
        metrics: &Metrics,
        outbox: Option<&Arc<Outbox>>,
    ) -> Result<Stack, crate::Error> {
        let outbox = match (route.async_enabled, outbox) {
            (false, _) => None,
            (true, Some(outbox)) => Some(outbox.clone()),
            (true, None) => {
                return Err(crate::Error::Invalid {
                    path: format!("routes[{index}].async.enabled"),
                    message: "the proxy started without an [outbox]: an async route needs a \
                              restart with one"
                        .to_owned(),
                });
            }
        };
        Ok(Stack {
            name: route.name.clone(),
            metrics: metrics.route(&route.name),
            fault: route
                .fault
                .as_ref()
                .map(|fault| Fault::new(fault, rng.clone(), &format!("routes[{index}].fault")))
                .transpose()?,
            fallback: route
                .fallback
                .as_ref()
                .map(|fallback| Fallback::new(fallback, &format!("routes[{index}].fallback")))
                .transpose()?,
            timeout: route.timeout,
            per_try_timeout: route.per_try_timeout,
            retry: Retry::new(route)?,
            hedging: Hedging::new(route)?,
            upstream,
            outbox,
            async_concurrency: route.async_concurrency as usize,
        })
    }

    /// The outbox, when the route is async: its requests are stored there and answered 202.
    pub(crate) fn outbox(&self) -> Option<&Outbox> {
        self.outbox.as_deref()
    }

    /// How many of the async route's deliveries may be in flight at once.
    pub(crate) fn async_concurrency(&self) -> usize {
        self.async_concurrency
    }

    /// The route's fault injection (`[routes.fault]`), applied by the caller before anything else.
    pub(crate) fn fault(&self) -> Option<&Fault> {
        self.fault.as_ref()
    }

    /// The route's fallback (`[routes.fallback]`), applied by the caller to what [`Stack::call`]
    /// returns.
    pub(crate) fn fallback(&self) -> Option<&Fallback> {
        self.fallback.as_ref()
    }

    /// The route's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The route's series.
    pub(crate) fn metrics(&self) -> &RouteMetrics {
        &self.metrics
    }

    /// The upstream's pool.
    /// Whether an answer with `headers` to a gRPC request is a gRPC answer, whose status may
    /// come in its trailers: the upstream is gRPC, or the answer says it is. The request's
    /// content-type alone does not make it one: a plain HTTP upstream never sends a
    /// `grpc-status`, and a client could otherwise have every answer of it owe one.
    pub(crate) fn answers_grpc(&self, headers: &HeaderMap) -> bool {
        self.upstream.is_grpc() || is_grpc(headers)
    }

    pub(crate) fn upstream(&self) -> &Pool {
        &self.upstream
    }

    /// The route's `timeout`: the whole exchange, until the response's last byte.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `request` (headers already rewritten) to the upstream, retrying as the route says,
    /// and waits for a response head until `deadline`; past it, the answer is `expired`. The
    /// response comes with its outcome as the endpoint's breaker classified it; its body fails
    /// once `deadline` passes before its end.
    ///
    /// When no attempt succeeds, the client gets the last upstream response as it is, if there
    /// was one (a 503 the upstream sent stays the upstream's 503), else the reason of the last
    /// failure, or `retry-budget-exhausted` when the budget refused the retry the failure called
    /// for. A refusal by the upstream's limits (`rate-limited`, `overloaded`) is not retried:
    /// it is the answer, or, when it met a retry, what the attempt before it came to.
    pub(crate) async fn call(
        &self,
        request: Request<RequestBody>,
        deadline: Instant,
        expired: Reason,
    ) -> Result<(Response<UpstreamBody>, Outcome), GaveUp> {
        let grpc = self.upstream.is_grpc() || is_grpc(request.headers());
        // The request's head is lent to each attempt: an HTTP/1.1 one writes it out as it
        // starts, so neither a retry nor a hedge needs a copy of it (`Connections::send`).
        let (head, body) = request.into_parts();

        // Only a request that may be retried is worth a copy of its body.
        let (retry, scope) = self
            .retry
            .as_ref()
            .and_then(|retry| Some((retry, retry.scope(&head, grpc)?)))
            // A request retried only when unsent is never hedged: with `attempts = 1` (a route
            // that hedges), it has no use for a copy.
            .filter(|(retry, scope)| *scope == Scope::Any || retry.attempts() > 1)
            .unzip();
        let replayable = retry.is_some_and(|retry| retry.can_replay(&body));
        let mut body = match retry {
            Some(retry) => {
                retry.budget().deposit();
                // A body too large to copy is kept for nothing, but handed to the next attempt
                // while no attempt has read any of it: one whose connection was refused sent
                // nothing, and a large upload must not fail because a redeploy began.
                let cap = if replayable {
                    retry.max_replay_body()
                } else {
                    0
                };
                Replay::record(body, cap)
            }
            None => Replay::once(body),
        };
        let attempts = retry.map_or(1, Retry::attempts);
        let mut delays = retry.map(|retry| retry.backoff().delays());
        // A hedge is sent again as a retry is: only what may be retried for any failure is
        // hedged (a hedge races an attempt that may be under way upstream).
        let hedging = self
            .hedging
            .as_ref()
            .zip(retry)
            .filter(|_| scope == Some(Scope::Any) && replayable);

        // What the failed attempt came to: kept through the backoff, to be the answer if no
        // endpoint takes the retry.
        let mut failed: Option<Last> = None;
        // Every endpoint this request was sent to: a retry or a hedge goes to another while one
        // may take it, since the ones tried have failed it or are still racing.
        let mut avoid = Avoid::default();
        let mut attempt = 0;
        let mut resends = 0;
        loop {
            attempt += 1;
            // A token and a slot are for attempts that are sent. A look at the pool, asking no
            // breaker, refuses at once an attempt no endpoint may take (every breaker open, no
            // endpoint healthy), as the pick would: a client told `rate-limited` for attempts
            // that never left would slow down instead of getting the route's fallback.
            if let Err(reason) = self.upstream.may_admit() {
                return failed.map_or(Err(reason.into()), Last::into_result);
            }
            let Some(attempt_body) = body.next() else {
                // A teed body not copied whole cannot be sent again (a streamed one is never
                // retried): the failed attempt's answer stands.
                return failed.map_or(Err(Reason::BadRequest.into()), Last::into_result);
            };
            // The upstream's limits come before the pick: they are the upstream's, whatever the
            // endpoint, and a wait in their queue must not hold a breaker's half-open probe.
            // A refusal is no endpoint's failure, and a retry would meet the same limits: the
            // answer is the refusal, or the failure before it.
            let slot = match tokio::time::timeout_at(deadline, self.upstream.limits().admit()).await
            {
                Ok(Ok(slot)) => slot,
                Ok(Err(reason)) => return failed.map_or(Err(reason.into()), Last::into_result),
                // A retry that waited for a place until the deadline: the answer in hand, if
                // any, is worth more than a timeout.
                Err(_elapsed) => return failed.map_or(Err(expired.into()), Last::into_result),
            };
            // Every breaker may have opened since the look, while the attempt waited in the
            // queue: its token is then spent on nothing (the rate limit gives none back), a race
            // no longer than the wait.
            let picked = match self.upstream.pick(&avoid) {
                Ok(picked) => picked,
                Err(reason) => return failed.map_or(Err(reason.into()), Last::into_result),
            };
            let first = picked.index;
            avoid.insert(first);
            // Counted once it goes: a retry the breakers or the limits stopped after its backoff
            // was never sent.
            if attempt > 1 {
                self.metrics.retried();
            }
            let sending = self.send(&head, attempt_body, picked, slot, (deadline, expired), grpc);

            let sent = match hedging {
                None => sending.await,
                Some((hedging, retry)) => {
                    // The endpoints of the hedges sent so far; allocated only once one is.
                    let mut hedged: Vec<usize> = Vec::new();
                    let hedge = || {
                        // Declining lets go of what was taken so far: a permit cut short before
                        // its attempt began and a slot given back teach nothing.
                        let picked = self.upstream.pick_hedge(&avoid).ok()?;
                        // Among several endpoints, a hedge to one already racing (the pick's
                        // last resort) would only double its load. One endpoint alone in its
                        // tier most often stands for several servers (a name a Kubernetes
                        // Service or a load balancer answers for): a hedge to it goes out on
                        // another connection (HTTP/1.1), which may reach another server, as
                        // Envoy's would; over HTTP/2, a stream of the same connection reaches
                        // what the first did, unless the balancer in front balances streams.
                        let racing = picked.index == first || hedged.contains(&picked.index);
                        if racing && !self.upstream.alone_in_tier(picked.index) {
                            return None;
                        }
                        let body = body.next()?;
                        // A hedge is an extra attempt, paid for like a retry, once it has a slot
                        // and before its token: what declines it spends no token.
                        let slot = self
                            .upstream
                            .limits()
                            .try_admit(|| retry.budget().withdraw())
                            .ok()?;
                        avoid.insert(picked.index);
                        hedged.push(picked.index);
                        self.metrics.hedged();
                        Some(self.send(&head, body, picked, slot, (deadline, expired), grpc))
                    };
                    let classify = |sent: &Sent| match sent {
                        Ok((_, outcome)) => *outcome,
                        Err(_) => Outcome::Failure,
                    };
                    // Boxed: a race holds two attempts, and inline it would make the future of
                    // every request on every route 1.9 KiB larger, hedged or not.
                    Box::pin(hedging.policy().race(classify, sending, hedge)).await
                }
            };
            // Left unprocessed by an upstream closing its connection: sent again at once, as
            // the same attempt (no retry, no backoff, no budget), on a new connection, as Go's
            // HTTP/2 client does; the previous failure, if any, still stands behind it.
            if matches!(sent, Err(Tried::Unprocessed))
                && resends < FREE_RESENDS
                && body.can_retry()
                && !body.is_held()
            {
                resends += 1;
                attempt -= 1;
                continue;
            }
            // The previous failure is superseded: let its connection go.
            drop(failed.take());
            let (tried, last) = match sent {
                Ok((response, outcome)) => {
                    let tried = answered(response.status(), response.headers(), grpc);
                    (tried, Last::Response(response, outcome))
                }
                Err(Tried::Client(fault)) => {
                    // The client's body failed the exchange, not the endpoint: no retry can mend
                    // it.
                    return Err(fault.reason().into());
                }
                // The process is short of descriptors or memory: another endpoint would need
                // the same, and a retry would only press harder. The answer is rampart's own
                // overload, unless an earlier attempt's answer is in hand.
                Err(Tried::Local) => {
                    return failed.map_or(Err(Reason::Overloaded.into()), Last::into_result);
                }
                Err(Tried::Transport(err)) => (Attempt::Error(err), Last::Error(err.into())),
                // Left unprocessed once too often, or with a body that cannot go again: a
                // refused stream, which a retry may still send.
                Err(Tried::Unprocessed) => {
                    let err = TransportError::RefusedStream;
                    (Attempt::Error(err), Last::Error(err.into()))
                }
                // No answer within the whole exchange's time.
                Err(Tried::Expired) => return Err(expired.into()),
            };

            // Not while the failed attempt still holds the request's body (it answered before
            // reading it whole): the answer stands.
            let Some(retry) = retry.filter(|retry| {
                attempt < attempts
                    && scope.is_some_and(|scope| retry.wants(&tried, scope))
                    && body.can_retry()
                    && !body.is_held()
            }) else {
                return last.into_result();
            };
            let mut delay = delays.as_mut().and_then(Iterator::next).unwrap_or_default();
            // The upstream's own word on coming back: never sooner than it asked, and not at all
            // when it says so. Nor when it asks for longer than the backoff ever waits: the
            // client gets the answer at once, Retry-After included, rather than a wait it did
            // not choose.
            if let Last::Response(response, _) = &last {
                match retry_hint(response.headers(), grpc) {
                    RetryHint::None => {}
                    RetryHint::After(hint) if hint <= retry.backoff().max() => {
                        delay = delay.max(hint);
                    }
                    RetryHint::After(_) | RetryHint::Never => return last.into_result(),
                }
            }
            // A retry that cannot start before the deadline would only turn the answer into a
            // timeout; so would one left less than `MIN_ATTEMPT` once it starts.
            if delay + MIN_ATTEMPT >= deadline.saturating_duration_since(turn::now()) {
                return last.into_result();
            }
            if !retry.budget().withdraw() {
                self.metrics.budget_exhausted();
                return match last {
                    Last::Response(response, outcome) => Ok((response, outcome)),
                    Last::Error(cause) => Err(GaveUp {
                        reason: Reason::RetryBudgetExhausted,
                        after: Some(cause),
                    }),
                };
            }
            tokio::time::sleep(delay).await;
            failed = Some(last);
        }
    }

    // One attempt to the endpoint `picked`, holding `slot` of the upstream's concurrency limit
    // until the response head: both learn the attempt's classified outcome. Dropped before the
    // head (a hedge that lost, a client that went away), the slot is let go without learning
    // anything and the permit is cut short (a slow call once past `slow_call`, unless the
    // exchange waited for the client's body). A good answer is judged again when its body ends,
    // the permit travelling with the body: a gRPC one whose head has no `grpc-status` (the usual
    // case: the status follows the body) by its trailers, another by whether its body ends
    // whole; the body is bounded by the deadline either way.
    async fn send(
        &self,
        head: &Parts,
        body: RequestBody,
        mut picked: Picked<'_>,
        slot: Slot<'_>,
        (deadline, expired): (Instant, Reason),
        grpc: bool,
    ) -> Sent {
        // Where the client's request body records its failure, looked up once for the attempt.
        let fault = head.extensions.get::<BodyFault>();
        picked.watch_client(fault);
        let response = match self
            .attempt(picked.index, head, body, fault, deadline, grpc)
            .await
        {
            Ok(response) => response,
            Err(tried) => {
                let awaits_client = || fault.is_some_and(BodyFault::awaits_client);
                let outcome = match tried {
                    // The client's own deadline, shorter than the route's timeout, ran out: that
                    // says nothing about the endpoint, and counted, any client could open every
                    // breaker with `x-rampart-deadline: 1`. Nor does a timeout (the route's, or
                    // `per_try_timeout`) while the upstream's side waited for the client's
                    // next piece of body: an HTTP/2 client waiting for a `100 Continue`, an
                    // upload slower than the timeout, left the endpoint no whole request to
                    // answer; counted, a few slow uploads would open the breaker for everyone.
                    // An upstream that stopped taking the body (it hangs) is no such wait, and
                    // counts. Past the client's own deadline, only an attempt that had already
                    // run past the slow-call threshold is a slow call (when slow calls trip the
                    // breaker), so that a hung endpoint behind short deadlines is still seen;
                    // one that waited for the client's body is not even that (`Picked`'s
                    // watch on the body releases it). The attempt went out, and counts as
                    // executed.
                    Tried::Expired if expired == Reason::DeadlineExceeded || awaits_client() => {
                        slot.executed();
                        picked.cut_short();
                        return Err(tried);
                    }
                    Tried::Transport(TransportError::Timeout) if awaits_client() => {
                        slot.executed();
                        picked.cut_short();
                        return Err(tried);
                    }
                    Tried::Transport(err) => {
                        picked.failed_with(Failure::Transport(err));
                        err.outcome()
                    }
                    // No answer within the route's timeout: a failure of this endpoint.
                    Tried::Expired => {
                        picked.failed_with(Failure::Timeout);
                        Outcome::Failure
                    }
                    // The client's body failed the exchange, or the process had no room for a
                    // connection: the endpoint's breaker and the limit learn nothing (permit and
                    // slot are let go unrecorded).
                    // Nor does an upstream closing its connection gracefully, which left the
                    // request unprocessed: the endpoint is well, and is answering others.
                    Tried::Client(_) | Tried::Local | Tried::Unprocessed => {
                        picked.release();
                        return Err(tried);
                    }
                };
                slot.record(outcome);
                picked.record(outcome);
                return Err(tried);
            }
        };
        let outcome = classify_response(
            response.status(),
            response.headers(),
            self.upstream.failures(),
            grpc,
        );
        if outcome == Outcome::Failure {
            picked.failed_with(match grpc_status(response.headers()) {
                Some(code) if grpc => Failure::Grpc(code),
                _ => Failure::Status(response.status().as_u16()),
            });
        }
        slot.record(outcome);
        // A good answer is judged again at its end. A gRPC answer with no status in its head is
        // judged by its trailers (`answers_grpc` says which answers are gRPC ones); any other
        // with a body to come stands as its head said unless its body breaks off, so that an
        // endpoint that cuts its answers short is ejected. Not a half-open probe: its endpoint
        // takes no other call until the probes are judged, and a stream may last an hour. Its
        // head is answer enough that the endpoint is back (a call failed at once comes
        // trailers-only, with its status in the head).
        let by_trailers = grpc
            && self.answers_grpc(response.headers())
            && grpc_status(response.headers()).is_none();
        let pending = if outcome != Outcome::Success || picked.is_probe() {
            picked.record(outcome);
            None
        } else if by_trailers {
            Some(picked.into_owned(&self.upstream))
        } else if !response.body().is_end_stream() {
            Some(picked.judged_by_head(&self.upstream))
        } else {
            picked.record(outcome);
            None
        };
        let fault = pending.is_some().then(|| fault.cloned()).flatten();
        let client_deadline = (expired == Reason::DeadlineExceeded).then_some(deadline);
        let response = response.map(|body| {
            OutcomeAtEnd::new(
                DeadlineBody::new(body, deadline),
                pending,
                fault,
                client_deadline,
            )
        });
        Ok((response, outcome))
    }

    // One attempt on endpoint `index`, its head bounded by the per-try timeout and the
    // deadline, telling the upstream the time it has; `fault` is where the request's body
    // records its failure.
    async fn attempt(
        &self,
        index: usize,
        head: &Parts,
        body: RequestBody,
        fault: Option<&BodyFault>,
        deadline: Instant,
        grpc: bool,
    ) -> Result<Response<PooledBody>, Tried> {
        let now = turn::now();
        // A request whose body is still to come (a client stream, an upload) cannot be answered
        // before it has gone: its per-try timeout counts from the body's end.
        let (body, after_body) = match self.per_try_timeout {
            Some(per_try) if !body.is_end_stream() => {
                let (body, sent) = SignalEnd::new(body);
                (RequestBody::new(body), Some((sent, per_try)))
            }
            _ => (body, None),
        };
        let try_deadline = match (after_body.is_some(), self.per_try_timeout) {
            (false, Some(per_try)) => deadline.min(now + per_try),
            _ => deadline,
        };
        // A gRPC server ends the whole call at its `grpc-timeout`, a stream's messages
        // included, while the per-try timeout bounds only the wait for the head: told the
        // per-try time, a server would end every stream that outlasts it (DEADLINE_EXCEEDED,
        // which the breaker would count). So a gRPC upstream is told what is left of the call,
        // as gRPC's own per-attempt timeouts leave the deadline it sends alone; an attempt
        // abandoned at its per-try timeout is reset, which the server sees as a cancellation at
        // once. Over HTTP the header says how long the upstream has to answer: with a body
        // still to come, when that ends is not known, and the call's deadline is said.
        let told = if grpc { deadline } else { try_deadline };
        let deadline_header = Outgoing {
            remaining: told.saturating_duration_since(now),
            grpc,
        };
        // Boxed: an exchange's future is about 1 KiB, and inline it would grow every request's
        // future by as much (with 10,000 connections left idle after a request each, 160 MiB
        // against 149 boxed).
        let sending = pin_in_box!(self.upstream.connections(index).send(
            head,
            deadline_header,
            body
        ));
        let answered = match after_body {
            Some((sent, per_try)) => {
                let head_due = async move {
                    // A body dropped before its end ended the exchange: what it came to is
                    // `sending`'s.
                    let _ = sent.await;
                    tokio::time::sleep_until(deadline.min(turn::now() + per_try)).await;
                };
                tokio::time::timeout_at(deadline, async {
                    tokio::select! {
                        biased;
                        answered = sending => Ok(answered),
                        () = head_due => Err(()),
                    }
                })
                .await
                .unwrap_or(Err(()))
                .map_err(|()| turn::now() < deadline)
            }
            None => tokio::time::timeout_at(try_deadline, sending)
                .await
                .map_err(|_elapsed| try_deadline < deadline),
        };
        match answered {
            // An HTTP/2 upstream's status past 599, which RFC 9110 §15 does not allow and
            // `StatusCode` does (up to 999); the HTTP/1.1 reader refuses it itself.
            Ok(Ok(response)) if response.status().as_u16() > 599 => {
                Err(Tried::Transport(TransportError::Invalid))
            }
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(match fault.and_then(BodyFault::get) {
                Some(fault) => Tried::Client(fault),
                None => match err.local_shortage() {
                    Some(cause) => {
                        warn_of_shortage(cause);
                        Tried::Local
                    }
                    None if left_unprocessed(&err) => Tried::Unprocessed,
                    None => Tried::Transport(transport_error(&err)),
                },
            }),
            // The per-try timeout ran out before the deadline.
            Err(true) => Err(Tried::Transport(TransportError::Timeout)),
            Err(false) => Err(Tried::Expired),
        }
    }
}

/// What one attempt came to: a response head and its classified outcome, or why there was none.
type Sent = Result<(Response<UpstreamBody>, Outcome), Tried>;

/// Why an attempt got no response.
enum Tried {
    /// The exchange failed, or the per-try timeout expired first.
    Transport(TransportError),
    /// The request's deadline passed.
    Expired,
    /// The client's request body failed the exchange (`max_request_body`, `body_idle_timeout`).
    Client(ClientBodyFault),
    /// No connection could be made for want of the process's own resources (file descriptors,
    /// memory, local ports): nothing of the endpoint's, and no other endpoint would fare better.
    Local,
    /// The upstream is closing its HTTP/2 connection (a GOAWAY that is no error, as nginx sends
    /// after `keepalive_requests`, as a server about to restart does) and its last stream came
    /// before this one: it did not process the request (RFC 9113 §6.8).
    Unprocessed,
}

/// Why [`Stack::call`] gave a request up: the reason the client is told, and for a retry the
/// budget refused (`retry-budget-exhausted`), what the attempt before it met, which says more
/// of the upstream's state (every endpoint down, say) than the refusal does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GaveUp {
    pub(crate) reason: Reason,
    pub(crate) after: Option<Reason>,
}

impl From<Reason> for GaveUp {
    fn from(reason: Reason) -> GaveUp {
        GaveUp {
            reason,
            after: None,
        }
    }
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.after {
            Some(after) => write!(f, "{} after {after}", self.reason),
            None => write!(f, "{}", self.reason),
        }
    }
}

/// How many times a request is sent again at no cost after an upstream left it unprocessed
/// while closing its connection: enough for a connection closing under many streams at once,
/// and no loop against a server that closes every connection at once (past it, the attempt
/// is a refused stream, a failure).
const FREE_RESENDS: u32 = 2;

impl Last {
    fn into_result(self) -> Result<(Response<UpstreamBody>, Outcome), GaveUp> {
        match self {
            Last::Response(response, outcome) => Ok((response, outcome)),
            Last::Error(reason) => Err(reason.into()),
        }
    }
}

/// Says, at most once every ten seconds, that a connection could not be made for want of the
/// process's own resources: the answers say `overloaded`, and only the log says why.
fn warn_of_shortage(cause: &io::Error) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    const EVERY: u64 = 10_000_000_000;
    let now = recent_nanos().max(1);
    let last = LAST.load(Ordering::Relaxed);
    if (last == 0 || now.saturating_sub(last) >= EVERY)
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            error = %cause,
            "cannot open an upstream connection: the process is out of file descriptors, \
             memory or local ports; requests are answered `overloaded` meanwhile (raise \
             `ulimit -n`, or lower `max_connections`)"
        );
    }
}

/// Whether an exchange failed because the upstream is closing its HTTP/2 connection without
/// error and did not process the request: h2 fails only the streams past the GOAWAY's last
/// stream with the GOAWAY's own error; those before it that the connection's end cuts off fail
/// as a broken pipe.
fn left_unprocessed(err: &SendError) -> bool {
    let SendError::Exchange(err) = err else {
        return false;
    };
    let mut source: Option<&(dyn StdError + 'static)> = Some(err.as_ref());
    while let Some(cause) = source {
        if let Some(err) = cause.downcast_ref::<h2::Error>() {
            return err.is_go_away()
                && err.is_remote()
                && err.reason() == Some(h2::Reason::NO_ERROR);
        }
        source = cause.source();
    }
    false
}

/// Why the client got no response head: a connect failure, or the exchange broke on the way.
fn transport_error(err: &SendError) -> TransportError {
    match err {
        SendError::Connect(_) => TransportError::ConnectFailure,
        SendError::Exchange(err) => broken_exchange(Some(err.as_ref())),
    }
}

/// Why an exchange on an open connection broke, from the chain of errors that says so: the
/// upstream's HTTP was invalid, its HTTP/2 refused the stream, or the connection or the stream
/// was reset or closed.
pub(crate) fn broken_exchange(mut source: Option<&(dyn StdError + 'static)>) -> TransportError {
    while let Some(cause) = source {
        if let Some(err) = cause.downcast_ref::<hyper::Error>()
            && (err.is_parse() || err.is_parse_status() || err.is_parse_too_large())
        {
            return TransportError::Invalid;
        }
        if let Some(err) = cause.downcast_ref::<h2::Error>() {
            return h2_error(err);
        }
        match cause.downcast_ref::<h1::Error>() {
            Some(h1::Error::Invalid(_)) => return TransportError::Invalid,
            Some(h1::Error::Closed) => return TransportError::Reset,
            // An I/O error or the request body's failure: its source says more.
            Some(h1::Error::Io(_) | h1::Error::Body(_)) | None => {}
        }
        if let Some(err) = cause.downcast_ref::<io::Error>() {
            return TransportError::from_io(err, false);
        }
        source = cause.source();
    }
    // A connection closed before the response (hyper's "incomplete message"), a canceled
    // request: the exchange broke.
    TransportError::Reset
}

fn h2_error(err: &h2::Error) -> TransportError {
    if let Some(err) = err.get_io() {
        return TransportError::from_io(err, false);
    }
    match err.reason() {
        // The upstream did not process the request: it refused the stream, or its GOAWAY named
        // a last stream below it (only such streams fail with a GOAWAY that is no error).
        Some(h2::Reason::REFUSED_STREAM) if err.is_remote() => TransportError::RefusedStream,
        Some(h2::Reason::NO_ERROR) if err.is_go_away() && err.is_remote() => {
            TransportError::RefusedStream
        }
        // What the upstream sent broke HTTP/2 itself, and this side said so.
        Some(
            h2::Reason::PROTOCOL_ERROR
            | h2::Reason::FRAME_SIZE_ERROR
            | h2::Reason::COMPRESSION_ERROR,
        ) if err.is_library() => TransportError::Invalid,
        _ => TransportError::Reset,
    }
}
