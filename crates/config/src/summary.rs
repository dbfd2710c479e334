//! A one-screen summary of a valid configuration, as `rampart check` prints it.

use std::fmt::{self, Display, Write as _};

use crate::model::*;
use crate::value::format_duration as dur;

/// Displays a [`Config`] in a few lines: listeners, routes with their match, upstream and the
/// policies on, upstreams with endpoints, balancing and breaker, and the outbox.
#[derive(Debug, Clone, Copy)]
pub struct Summary<'a>(pub(crate) &'a Config);

impl Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        let token = match &c.admin.token_env {
            Some(var) => format!("mutating calls need the token in ${var}"),
            None => "no token: mutating calls are refused".to_owned(),
        };
        let metrics = if c.admin.metrics { "" } else { ", metrics off" };
        writeln!(f, "admin      {} ({token}{metrics})", c.admin.listen)?;
        writeln!(f, "listeners  {}", c.listeners.len())?;
        for l in &c.listeners {
            writeln!(
                f,
                "  {:<12} {} {}, max {} connections, body <= {}",
                l.name,
                l.listen,
                l.protocol.as_str(),
                l.max_connections,
                l.max_request_body
            )?;
        }
        writeln!(f, "routes     {} (first match wins)", c.routes.len())?;
        for r in &c.routes {
            let listener = if c.listeners.len() > 1 {
                format!("[{}] ", r.listener)
            } else {
                String::new()
            };
            writeln!(
                f,
                "  {:<12} {listener}{} -> {}",
                r.name,
                describe_match(&r.matcher),
                r.upstream
            )?;
            writeln!(f, "  {:<12} {}", "", policies(r))?;
        }
        writeln!(f, "upstreams  {}", c.upstreams.len())?;
        for u in &c.upstreams {
            let endpoints: Vec<String> = u.endpoints.iter().map(ToString::to_string).collect();
            let mut line = format!(
                "{} {}, endpoints {}",
                u.protocol.as_str(),
                u.balance.as_str(),
                endpoints.join(", ")
            );
            if !u.backup.is_empty() {
                let backup: Vec<String> = u.backup.iter().map(ToString::to_string).collect();
                let _ = write!(line, "; backup {}", backup.join(", "));
            }
            writeln!(f, "  {:<12} {line}", u.name)?;
            writeln!(f, "  {:<12} {}", "", upstream_policies(u))?;
        }
        match &c.outbox {
            Some(o) => {
                let store = match &o.store {
                    OutboxStore::Embedded => format!("embedded at {}", o.path.display()),
                    OutboxStore::Nats { url, stream } => {
                        format!("nats {} stream {stream}", redacted(url))
                    }
                };
                writeln!(
                    f,
                    "outbox     {store}, max {} messages or {}, on full {}, max age {}, \
                     tombstones kept {}, bodies buffered at most {}",
                    o.max_messages,
                    o.max_bytes,
                    o.on_full.as_str(),
                    dur(o.max_age),
                    dur(o.retention),
                    o.max_buffered
                )
            }
            None => writeln!(f, "outbox     none"),
        }
    }
}

/// A NATS URL (one server or several, comma-separated) with each server's credentials (what
/// comes before the last `@` of its address, a scheme or not) shown as `***`: what is printed of
/// it. The outbox's NATS store redacts its errors the same way (`rampart-outbox`, nats/url.rs).
fn redacted(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let (scheme, rest) = match server.split_once("://") {
                Some((scheme, rest)) => (&server[..scheme.len() + 3], rest),
                None => ("", server),
            };
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}***{}", &rest[at..]),
                None => server.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn describe_match(m: &Match) -> String {
    if m.is_any() {
        return "any request".to_owned();
    }
    let mut parts = Vec::new();
    if let Some(method) = &m.method {
        parts.push(method.clone());
    }
    if let Some(host) = &m.host {
        parts.push(format!("host {host}"));
    }
    if let Some(path) = &m.path {
        parts.push(format!("path {path}"));
    }
    if let Some(prefix) = &m.path_prefix {
        parts.push(format!("{prefix}*"));
    }
    for (name, value) in &m.headers {
        parts.push(format!("{name}: {value}"));
    }
    parts.join(" ")
}

fn policies(r: &Route) -> String {
    let mut on = vec![format!("timeout {}", dur(r.timeout))];
    if let Some(p) = r.per_try_timeout {
        on.push(format!("per try {}", dur(p)));
    }
    if r.retry.attempts > 1 {
        // The methods retried for any failure `on` names (any other, POST by default, only for
        // one that left it unsent).
        on.push(format!(
            "retry x{} ({})",
            r.retry.attempts,
            r.retry.methods.join(" ")
        ));
    }
    if let Some(h) = &r.hedge {
        let after = match h.after {
            HedgeAfter::Delay(d) => dur(d),
            HedgeAfter::Percentile(p) => format!("p{p}"),
        };
        on.push(format!("hedge after {after}"));
    }
    if let Some(fb) = &r.fallback {
        on.push(format!("fallback {} on {}", fb.status, fb.on.join("/")));
    }
    if let Some(fault) = &r.fault {
        let mut what = Vec::new();
        if let Some(d) = fault.delay {
            what.push(format!("delay {} {}%", dur(d), fault.delay_percent));
        }
        match (fault.abort_status, fault.abort_grpc_status) {
            (Some(s), None) => what.push(format!("abort {s} {}%", fault.abort_percent)),
            (None, Some(g)) => {
                what.push(format!("abort grpc {} {}%", g.name(), fault.abort_percent))
            }
            (Some(s), Some(g)) => what.push(format!(
                "abort {s} (grpc {}) {}%",
                g.name(),
                fault.abort_percent
            )),
            (None, None) => {}
        }
        if what.is_empty() {
            what.push("set, but neither delay nor abort".to_owned());
        }
        on.push(format!("FAULT {}", what.join(", ")));
    }
    if r.async_enabled {
        on.push(format!("async (outbox, {} in flight)", r.async_concurrency));
    }
    on.join(", ")
}

fn upstream_policies(u: &Upstream) -> String {
    let b = &u.breaker;
    let mut on = Vec::new();
    if b.enabled {
        let mut trips = Vec::new();
        if b.consecutive_failures > 0 {
            trips.push(format!("{} failures in a row", b.consecutive_failures));
        }
        trips.push(format!(
            "{}% of {}+ calls in {}",
            b.failure_rate * 100.0,
            b.min_calls,
            dur(b.window)
        ));
        on.push(format!(
            "breaker: {}, open {}..{}",
            trips.join(" or "),
            dur(b.open_for),
            dur(b.open_for_max)
        ));
    } else {
        on.push("breaker off".to_owned());
    }
    if let Some(h) = &u.health {
        let check = match &h.check {
            HealthCheck::Http(path) => format!("GET {path}"),
            HealthCheck::Grpc => "grpc.health.v1".to_owned(),
        };
        on.push(format!("health {check} every {}", dur(h.interval)));
    }
    let l = &u.limits;
    match l.max_concurrent {
        MaxConcurrent::Fixed(n) if l.max_pending == 0 || l.pending_timeout.is_zero() => {
            on.push(format!("max {n} concurrent, no queue"));
        }
        MaxConcurrent::Fixed(n) => on.push(format!(
            "max {n} concurrent, {} queued up to {}",
            l.max_pending,
            dur(l.pending_timeout)
        )),
        MaxConcurrent::Adaptive => on.push("adaptive concurrency".to_owned()),
    }
    if let (Some(rate), Some(burst)) = (l.rate, l.rate_burst()) {
        on.push(format!("rate {rate}, burst {burst}"));
    }
    on.join("; ")
}
