//! The report under `--out`: `results.json` (as CONTRACT.md fixes it), `timeline.json` (what the
//! charts and the account are drawn from), the charts, and `index.html`; and the summary table
//! and the checks printed on the terminal.
//!
//! Every sentence of the account is made from what was recorded: the fault window as it
//! happened, the requests' outcomes and latencies, the sidecars' breaker transitions and health
//! changes (from their event streams) and their counts (from their admin APIs).

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use serde_json::{Value, json};

use crate::Protocol;
use crate::chart;
use crate::cluster::Wiring;
use crate::scenario::{Scenario, Timing};
use crate::sidecar::{Counts, Transition};
use crate::stats::{Record, Second};

/// The scenarios whose protected p99 must stay within [`P99_BOUND_MS`].
const LATENCY_BOUND: [Scenario; 3] = [Scenario::Crash, Scenario::Slow, Scenario::Flaky];
/// The protected p99 the demo promises in those scenarios.
const P99_BOUND_MS: f64 = 300.0;
/// The protected success rate the demo promises in every scenario.
const SUCCESS_BOUND: f64 = 0.995;

/// One run of a scenario, in one wiring.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) wiring: Wiring,
    pub(crate) record: Record,
    pub(crate) seconds: Vec<Second>,
    /// When the first and the last request that got less than a whole page within a second were
    /// sent.
    pub(crate) trouble: Option<(f64, f64)>,
    /// The fault window as it happened, in seconds from the start.
    pub(crate) window: (f64, f64),
    /// The sidecars' counts (zero for naive).
    pub(crate) counts: Counts,
    pub(crate) transitions: Vec<Transition>,
    /// The `async` scenario's orders; `None` in every other scenario.
    pub(crate) delivery: Option<Delivery>,
}

/// What became of the orders posted through the outbox in the `async` scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Orders answered `202 Accepted`.
    pub(crate) accepted: u64,
    /// Of those, the orders C received.
    pub(crate) delivered: u64,
    /// Accepted and never delivered.
    pub(crate) lost: u64,
    /// Deliveries C took of an order it had taken before: delivery is at least once, and an
    /// order whose delivery C's SIGKILL cut short after C wrote it down is delivered again.
    pub(crate) duplicates: u64,
}

/// A scenario's two runs.
#[derive(Debug, Clone)]
pub(crate) struct ScenarioResult {
    pub(crate) scenario: Scenario,
    pub(crate) timing: Timing,
    pub(crate) naive: Run,
    pub(crate) protected: Run,
}

/// Makes the report's directory and checks a file can be written in it.
pub(crate) fn prepare(out: &Path) -> io::Result<()> {
    // `create_dir_all` on a file says only "File exists".
    if out.exists() && !out.is_dir() {
        let err = io::Error::new(
            io::ErrorKind::NotADirectory,
            "it is a file, not a directory",
        );
        return Err(unwritable(out, err));
    }
    let probe = out.join(".rampart-demo-write-check");
    std::fs::create_dir_all(out)
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|err| unwritable(out, err))
}

/// Writes `results.json`, `timeline.json`, the charts and `index.html` into `out`.
pub(crate) fn write(out: &Path, protocol: Protocol, results: &[ScenarioResult]) -> io::Result<()> {
    write_all(out, protocol, results).map_err(|err| unwritable(out, err))
}

/// `err`, saying where the report could not be written.
fn unwritable(out: &Path, err: io::Error) -> io::Error {
    io::Error::new(
        err.kind(),
        format!("cannot write the report in {}: {err}", out.display()),
    )
}

fn write_all(out: &Path, protocol: Protocol, results: &[ScenarioResult]) -> io::Result<()> {
    std::fs::create_dir_all(out)?;
    let pretty = |value: &Value| serde_json::to_string_pretty(value).map_err(io::Error::other);
    std::fs::write(out.join("results.json"), pretty(&results_json(results))?)?;
    std::fs::write(
        out.join("timeline.json"),
        pretty(&timeline_json(protocol, results))?,
    )?;
    for result in results {
        chart::write(out, result)?;
    }
    std::fs::write(out.join("index.html"), html(protocol, results))?;
    Ok(())
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

fn record_json(run: &Run) -> Value {
    let record = &run.record;
    let mut json = json!({
        "requests": record.requests,
        "ok": record.ok,
        "failed": record.failed,
        "fallback": record.fallback,
        "success_rate": round(record.success_rate(), 4),
        "p50_ms": round(record.p50_ms, 1),
        "p99_ms": round(record.p99_ms, 1),
        "max_ms": round(record.max_ms, 1),
        "breaker_transitions": run.counts.breaker_transitions,
    });
    if let Some(delivery) = run.delivery {
        json["accepted"] = json!(delivery.accepted);
        json["delivered"] = json!(delivery.delivered);
        json["lost"] = json!(delivery.lost);
        json["duplicates"] = json!(delivery.duplicates);
    }
    json
}

/// `{"scenarios": {"<scenario>": {"naive": {...}, "protected": {...}}}}`.
fn results_json(results: &[ScenarioResult]) -> Value {
    let scenarios: serde_json::Map<String, Value> = results
        .iter()
        .map(|result| {
            let runs = json!({
                "naive": record_json(&result.naive),
                "protected": record_json(&result.protected),
            });
            (result.scenario.name().to_owned(), runs)
        })
        .collect();
    json!({ "scenarios": scenarios })
}

fn timeline_json(protocol: Protocol, results: &[ScenarioResult]) -> Value {
    let run_json = |run: &Run| {
        let seconds: Vec<Value> = run
            .seconds
            .iter()
            .map(|second| {
                json!({
                    "at": second.at,
                    "requests": second.requests,
                    "success_rate": round(second.success_rate(), 4),
                    "fallback": second.fallback,
                    "p50_ms": round(second.p50_ms, 1),
                    "p99_ms": round(second.p99_ms, 1),
                })
            })
            .collect();
        let transitions: Vec<Value> = run
            .transitions
            .iter()
            .map(|t| {
                json!({"at": round(t.at, 2), "sidecar": t.sidecar, "upstream": t.upstream,
                       "endpoint": t.endpoint, "what": t.what})
            })
            .collect();
        json!({
            "fault_window_s": [round(run.window.0, 2), round(run.window.1, 2)],
            "failed": {"partial": run.record.partial, "timeouts": run.record.timeouts,
                       "errors": run.record.failed - run.record.partial - run.record.timeouts},
            "sidecars": {"fallbacks": run.counts.fallbacks, "retries": run.counts.retries,
                         "retry_budget_exhausted": run.counts.budget_exhausted,
                         "breaker_transitions": run.counts.breaker_transitions},
            "transitions": transitions,
            "seconds": seconds,
        })
    };
    let scenarios: serde_json::Map<String, Value> = results
        .iter()
        .map(|result| {
            let value = json!({
                "story": result.scenario.story(),
                "rate": result.timing.rate,
                "duration_s": result.timing.duration.as_secs(),
                "planned_fault_window_s": [result.timing.fault_start.as_secs(), result.timing.fault_end.as_secs()],
                "naive": run_json(&result.naive),
                "protected": run_json(&result.protected),
            });
            (result.scenario.name().to_owned(), value)
        })
        .collect();
    json!({"protocol": protocol.as_str(), "scenarios": scenarios})
}

/// The summary's columns, as the page shows them, and each column's width on the terminal,
/// where `None` leaves it out: the requests are the same for both wirings and said above the
/// runs, and the page and `results.json` keep the longest wait, so that the table fits an
/// 80-column terminal.
const SUMMARY: [(&str, Option<usize>); 11] = [
    ("scenario", Some(12)),
    ("wiring", Some(9)),
    ("requests", None),
    ("ok", Some(5)),
    ("fallback", Some(8)),
    ("failed", Some(6)),
    ("success", Some(7)),
    ("p50 ms", Some(7)),
    ("p99 ms", Some(7)),
    ("max ms", None),
    ("breakers", Some(8)),
];

/// The summary's rows, each scenario's naive run then its protected one, a cell per column of
/// [`SUMMARY`].
fn summary_rows(results: &[ScenarioResult]) -> Vec<[String; 11]> {
    let row = |result: &ScenarioResult, run: &Run| {
        let r = &run.record;
        [
            result.scenario.name().to_owned(),
            run.wiring.name().to_owned(),
            r.requests.to_string(),
            r.ok.to_string(),
            r.fallback.to_string(),
            r.failed.to_string(),
            format!("{:.2}%", r.success_rate() * 100.0),
            format!("{:.1}", r.p50_ms),
            format!("{:.1}", r.p99_ms),
            format!("{:.1}", r.max_ms),
            run.counts.breaker_transitions.to_string(),
        ]
    };
    results
        .iter()
        .flat_map(|result| [row(result, &result.naive), row(result, &result.protected)])
        .collect()
}

/// The summary table, for the terminal: the first two columns to the left, numbers to the right.
pub(crate) fn table(results: &[ScenarioResult]) -> String {
    let line = |cells: [&str; 11]| {
        let cells: Vec<String> = cells
            .iter()
            .zip(SUMMARY)
            .enumerate()
            .filter_map(|(i, (cell, (_, width)))| {
                let width = width?;
                Some(if i < 2 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                })
            })
            .collect();
        cells.join(" ").trim_end().to_owned() + "\n"
    };
    let mut text = line(SUMMARY.map(|(name, _)| name));
    for row in summary_rows(results) {
        text.push_str(&line(row.each_ref().map(String::as_str)));
    }
    text.push_str(LEGEND);
    text
}

/// What the table's columns count, under it: the success a protected run claims is whole pages
/// and pages with stand-ins together, which the table alone does not say.
const LEGEND: &str = "
ok: whole pages. fallback: pages the sidecars completed with stand-ins for what
C could not give in time. failed: errors, broken pages, and requests that got
nothing within the client's 10 s. success: ok and fallback, of all requests.
p50/p99: time to the answer (the report has the longest too). breakers: state
changes of the sidecars' circuit breakers (naive has none).
";

/// The widest line the demo prints on the terminal: under 80 columns, so that no line wraps
/// where the terminal chooses.
pub(crate) const TERMINAL_WIDTH: usize = 79;

/// `text` for the terminal: each of its lines cut between words within [`TERMINAL_WIDTH`], the
/// lines a cut makes indented by `indent` (past a check's mark, under a scenario's name).
pub(crate) fn wrap(text: &str, indent: usize) -> String {
    let mut wrapped = String::new();
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            wrapped.push('\n');
        }
        let mut width = 0;
        for word in line.split(' ') {
            if width > indent && width + 1 + word.len() > TERMINAL_WIDTH {
                wrapped.push('\n');
                wrapped.extend(std::iter::repeat_n(' ', indent));
                width = indent;
            } else if width > 0 {
                wrapped.push(' ');
                width += 1;
            }
            wrapped.push_str(word);
            width += word.len();
        }
    }
    wrapped
}

/// What the demo promises, checked against what it measured: one line each.
pub(crate) fn checks(results: &[ScenarioResult]) -> Vec<String> {
    let mut lines = Vec::new();
    let mark = |held: bool| if held { "held  " } else { "FAILED" };
    for result in results {
        let (naive, protected) = (&result.naive.record, &result.protected.record);
        let name = result.scenario.name();
        let success = protected.success_rate();
        lines.push(format!(
            "{} {name}: protected success {:.2}% >= {:.1}%",
            mark(success >= SUCCESS_BOUND),
            success * 100.0,
            SUCCESS_BOUND * 100.0
        ));
        if let Some(delivery) = result.protected.delivery {
            lines.push(format!(
                "{} {name}: protected lost {} of {} accepted orders (none may be)",
                mark(delivery.lost == 0 && delivery.accepted > 0),
                delivery.lost,
                delivery.accepted
            ));
        }
        let latency_bound = LATENCY_BOUND.contains(&result.scenario);
        if latency_bound {
            lines.push(format!(
                "{} {name}: protected p99 {:.0} ms <= {P99_BOUND_MS:.0} ms",
                mark(protected.p99_ms <= P99_BOUND_MS),
                protected.p99_ms
            ));
        }
        // Where a fault hurts the naive wiring's clients: lost pages or latency, refused orders.
        if latency_bound || result.protected.delivery.is_some() {
            // Success counts pages with stand-ins: the whole pages are said beside it.
            lines.push(format!(
                "{} {name}: naive worse: success {:.2}% against {:.2}% (whole pages {} against {}), p99 {:.0} ms against {:.0} ms",
                mark(worse(naive, protected)),
                naive.success_rate() * 100.0,
                success * 100.0,
                naive.ok,
                protected.ok,
                naive.p99_ms,
                protected.p99_ms
            ));
        }
    }
    lines
}

/// Visibly worse: at least a point less success, or a p99 at least twice as long.
fn worse(naive: &Record, protected: &Record) -> bool {
    naive.success_rate() <= protected.success_rate() - 0.01
        || naive.p99_ms >= 2.0 * protected.p99_ms
}

// === the account ===

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "0%".to_owned()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// What the client saw during one run, in a few sentences.
fn account(run: &Run) -> Vec<String> {
    if let Some(delivery) = run.delivery {
        return orders_account(run, delivery);
    }
    let r = &run.record;
    let (start, end) = run.window;
    let mut sentences = vec![format!(
        "The fault lasted from {start:.1} s to {end:.1} s. Of {} requests, {} got a whole page, {} a page with stand-ins and {} failed ({} success); p50 {:.0} ms, p99 {:.0} ms, slowest {:.0} ms.",
        r.requests,
        r.ok,
        r.fallback,
        r.failed,
        percent(r.ok + r.fallback, r.requests),
        r.p50_ms,
        r.p99_ms,
        r.max_ms
    )];
    if r.failed > 0 {
        let errors = r.failed - r.partial - r.timeouts;
        sentences.push(format!(
            "Of the failures, {} got no answer within the client's 10 s, {} a page with a part missing, {errors} an error.",
            r.timeouts, r.partial
        ));
    }
    if r.slow > 0 {
        sentences.push(format!(
            "{} requests took longer than a second to be answered.",
            r.slow
        ));
    }
    match run.trouble {
        None => sentences.push("Every request got a whole page within a second.".to_owned()),
        Some((first, last)) => {
            let after = last - end;
            let when = if after > 0.0 {
                format!("{after:.1} s after the fault ended")
            } else {
                format!("{:.1} s before the fault ended", -after)
            };
            // By the time a request was sent, not answered.
            sentences.push(format!(
                "The first request to get less than a whole page within a second was sent at {first:.1} s, the last at {last:.1} s ({when}); every request sent after it got a whole page within a second."
            ));
        }
    }
    if run.wiring == Wiring::Protected {
        let c = &run.counts;
        sentences.push(format!(
            "The sidecars answered {} times with a fallback, sent {} retries and refused {} more to keep within the retry budget; their breakers changed state {} times.",
            c.fallbacks, c.retries, c.budget_exhausted, c.breaker_transitions
        ));
        sentences.extend(transitions_told(&run.transitions));
    }
    sentences
}

/// What became of the orders of the `async` scenario, in a few sentences.
fn orders_account(run: &Run, delivery: Delivery) -> Vec<String> {
    let r = &run.record;
    let (start, end) = run.window;
    let mut sentences = vec![format!(
        "C was down from {start:.1} s to {end:.1} s. Of {} orders posted, A accepted {} ({}) and refused or failed {}; p50 {:.0} ms, p99 {:.0} ms, slowest {:.0} ms.",
        r.requests,
        delivery.accepted,
        percent(delivery.accepted, r.requests),
        r.requests - delivery.accepted,
        r.p50_ms,
        r.p99_ms,
        r.max_ms
    )];
    sentences.push(match delivery.lost {
        0 => format!(
            "Every accepted order reached C: {} of {}.",
            delivery.delivered, delivery.accepted
        ),
        lost => format!(
            "{lost} accepted orders never reached C ({} of {} did).",
            delivery.delivered, delivery.accepted
        ),
    });
    if delivery.duplicates > 0 {
        sentences.push(format!(
            "C took {} orders a second time: delivery is at least once, and an order whose \
             delivery C's kill cut short after C had written it down is delivered again (its \
             `x-rampart-message-id` and `idempotency-key` let C tell).",
            delivery.duplicates
        ));
    }
    match run.wiring {
        Wiring::Naive => sentences.push(
            "A placed each order with C directly: while C was down, the client got an error and \
             the order was not taken."
                .to_owned(),
        ),
        Wiring::Protected => {
            sentences.push(
                "A placed each order through its sidecar's async route: the sidecar wrote it to \
                 disk and answered 202 at once, then delivered it when C could take it."
                    .to_owned(),
            );
            sentences.extend(transitions_told(&run.transitions));
        }
    }
    sentences
}

/// The breaker transitions and health changes, endpoint by endpoint: the first few in full,
/// then how many more.
fn transitions_told(transitions: &[Transition]) -> Vec<String> {
    let mut endpoints: Vec<(&str, &str, &str)> = Vec::new();
    for t in transitions {
        let key = (t.sidecar, t.upstream.as_str(), t.endpoint.as_str());
        if !endpoints.contains(&key) {
            endpoints.push(key);
        }
    }
    endpoints
        .into_iter()
        .map(|(sidecar, upstream, endpoint)| {
            let events: Vec<String> = transitions
                .iter()
                .filter(|t| {
                    t.sidecar == sidecar && t.upstream == upstream && t.endpoint == endpoint
                })
                .map(|t| format!("{} at {:.1} s", t.what, t.at))
                .collect();
            let shown = events.len().min(8);
            let more = match events.len() - shown {
                0 => String::new(),
                1 => ", and 1 more change".to_owned(),
                n => format!(", and {n} more changes"),
            };
            format!(
                "{}'s sidecar, {} endpoint {endpoint}: {}{more}.",
                sidecar.to_ascii_uppercase(),
                upstream.to_ascii_uppercase(),
                events[..shown].join(", ")
            )
        })
        .collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html(protocol: Protocol, results: &[ScenarioResult]) -> String {
    let mut page = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>rampart demo report</title>\n\
         <style>body{font-family:sans-serif;max-width:820px;margin:2em auto;padding:0 1em;color:#222}\
         table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}\
         td:first-child,th:first-child{text-align:left}img{max-width:100%}.held{color:#2a7}.failed{color:#c22}</style>\n\
         </head><body>\n<h1>rampart demo report</h1>\n",
    );
    let _ = writeln!(
        page,
        "<p>A client calls A; A calls B and D in parallel, B calls C. Faults are injected into C. \
         Each scenario ran twice with the same load, over {}: <b>naive</b> (each service calls the \
         next directly, with a plain client at its defaults) and <b>protected</b> (every call goes \
         through a rampart sidecar). A request succeeded when it got a page, whole or with \
         stand-ins that the sidecars chose to give (marked degraded); it failed when the page had \
         a part missing, came back as an error, or did not come within the client's 10 s. \
         docs/demo.md explains the setup and the policies.</p>",
        protocol.as_str()
    );
    page.push_str("<h2>Summary</h2>\n<table><tr>");
    for (name, _) in SUMMARY {
        let _ = write!(page, "<th>{name}</th>");
    }
    page.push_str("</tr>\n");
    for [scenario, rest @ ..] in summary_rows(results) {
        let _ = write!(page, "<tr><td><a href=\"#{scenario}\">{scenario}</a></td>");
        for cell in rest {
            let _ = write!(page, "<td>{}</td>", escape(&cell));
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table>\n<ul>\n");
    for check in checks(results) {
        let class = if check.starts_with("held") {
            "held"
        } else {
            "failed"
        };
        let _ = writeln!(page, "<li class=\"{class}\">{}</li>", escape(&check));
    }
    page.push_str("</ul>\n");
    for result in results {
        let name = result.scenario.name();
        let [success, latency] = chart::names(name);
        let _ = writeln!(
            page,
            "<h2 id=\"{name}\">{name}</h2>\n<p>{}, from {} s to {} s of each run ({} requests/s for {} s).</p>",
            escape(&capitalized(result.scenario.story())),
            result.timing.fault_start.as_secs(),
            result.timing.fault_end.as_secs(),
            result.timing.rate,
            result.timing.duration.as_secs(),
        );
        for run in [&result.naive, &result.protected] {
            let _ = writeln!(
                page,
                "<p><b>{}.</b> {}</p>",
                capitalized(run.wiring.name()),
                escape(&account(run).join(" "))
            );
        }
        let _ = writeln!(
            page,
            "<p><img src=\"{success}\" alt=\"{name}: success rate over time\"></p>\n\
             <p><img src=\"{latency}\" alt=\"{name}: latency over time\"></p>"
        );
    }
    page.push_str("<p>The numbers behind this page: <a href=\"results.json\">results.json</a>, <a href=\"timeline.json\">timeline.json</a>.</p>\n</body></html>\n");
    page
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run with the widest figures a demo can print: every request of the default run, the
    /// client's whole 10 s wait as the p99.
    fn widest(wiring: Wiring) -> Run {
        Run {
            wiring,
            record: Record {
                requests: 2_000,
                ok: 2_000,
                fallback: 2_000,
                failed: 2_000,
                p50_ms: 10_000.0,
                p99_ms: 10_000.0,
                max_ms: 10_000.0,
                ..Record::default()
            },
            seconds: Vec::new(),
            trouble: None,
            window: (10.0, 25.0),
            counts: Counts {
                breaker_transitions: 1_000,
                ..Counts::default()
            },
            transitions: Vec::new(),
            delivery: None,
        }
    }

    #[test]
    fn the_table_fits_an_80_column_terminal() {
        let result = ScenarioResult {
            scenario: Scenario::ReplicaLoss,
            timing: Timing::new(false),
            naive: widest(Wiring::Naive),
            protected: widest(Wiring::Protected),
        };
        let table = table(&[result]);
        for line in table.lines() {
            assert!(
                line.len() <= TERMINAL_WIDTH,
                "{} columns: {line:?}",
                line.len()
            );
        }
        assert!(table.contains("replica-loss protected"), "{table}");
    }

    #[test]
    fn a_long_check_wraps_under_its_text() {
        let check = "held   replica-loss: naive worse: success 57.00% against 100.00% (whole \
                     pages 1399 against 1370), p99 10000 ms against 135 ms";
        let wrapped = wrap(check, 7);
        let lines: Vec<&str> = wrapped.lines().collect();
        assert_eq!(lines.len(), 2, "{wrapped}");
        assert!(
            lines.iter().all(|line| line.len() <= TERMINAL_WIDTH),
            "{wrapped}"
        );
        // Under the text, past the mark.
        assert!(lines[1].starts_with("       1399 against"), "{wrapped}");
        // Nothing lost, the mark's spaces kept.
        assert_eq!(wrapped.replace("\n       ", " "), check);
        assert_eq!(
            wrap("held   short\nsecond line", 7),
            "held   short\nsecond line"
        );
    }

    #[test]
    fn a_file_where_the_report_goes_is_named_as_such() {
        let file = std::env::temp_dir().join(format!("rampart-demo-report-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let err = super::prepare(&file).unwrap_err();
        std::fs::remove_file(&file).unwrap();
        assert!(err.to_string().contains("a file, not a directory"), "{err}");
    }
}
