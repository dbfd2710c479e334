//! The `rampart` command: wiring only; the work lives in the library crates.

use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use rampart_admin::{Admin, Fleet, Reload, ReloadError, Target};
use rampart_config::{Config, Errors};
use rampart_proxy::{Drain, Proxy, ProxyHandle, ReloadSummary};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{Directive, LevelFilter};

/// mimalloc rather than the system's allocator: a request through the proxy makes about 18
/// allocations (hyper's buffers and channels, the boxed request future, the bodies), and glibc's
/// malloc and free spent about 5,000 instructions per request on them; mimalloc serves them from
/// per-thread pages (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `rampart version`: set by build.rs.
const BUILD_INFO: &str = concat!(
    "rampart ",
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("RAMPART_GIT_COMMIT"),
    "\nrustc: ",
    env!("RAMPART_RUSTC_VERSION"),
    "\ntarget: ",
    env!("RAMPART_TARGET"),
    "\nprofile: ",
    env!("RAMPART_PROFILE"),
);

/// Resilient calls between services.
#[derive(Debug, Parser)]
#[command(name = "rampart", version, about)]
struct Cli {
    /// The least severe events logged (on stderr). `RUST_LOG`, when set, takes precedence, with
    /// its per-target syntax (`RUST_LOG=rampart_proxy=debug,info`).
    #[arg(long, global = true, value_enum, default_value = "info")]
    log_level: LogLevel,
    /// How log lines are written: `text` for people, `json` (one object per line) for collectors.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar proxy, and its admin API on `[admin] listen`. SIGHUP (or
    /// `POST /api/reload`) reloads the configuration file; SIGTERM or SIGINT drains and exits.
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = "rampart.toml")]
        config: PathBuf,
        /// Drain and exit, as on SIGTERM, when standard input closes: a parent that keeps the
        /// other end open takes the sidecar with it however it ends, SIGKILL included
        /// (`rampart demo` runs its sidecars so).
        #[arg(long, hide = true)]
        until_stdin_closes: bool,
    },
    /// Validate a configuration file.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "rampart.toml")]
        config: PathBuf,
    },
    /// Serve one live dashboard over the admin APIs of several rampart instances, so that a
    /// fleet of sidecars is watched on one page. Runs until SIGTERM or SIGINT.
    Dashboard {
        /// An instance's admin API, `http://HOST:PORT`; several may follow one `--target`, and
        /// `--target` may be repeated.
        #[arg(long = "target", value_name = "URL", required = true, num_args = 1..,
              value_parser = TargetParser)]
        targets: Vec<Target>,
        /// Where the dashboard listens.
        #[arg(long, default_value = "127.0.0.1:9900")]
        listen: SocketAddr,
    },
    /// Run the client -> A -> B -> C example, naive against protected, and write its report.
    Demo(rampart_demo::Args),
    /// One of the demo's services; `rampart demo` starts them.
    #[command(name = "__demo-service", hide = true)]
    DemoService(rampart_demo::ServiceArgs),
    /// Print the version and build information: git commit, compiler, target and profile.
    Version,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging(cli.log_level, cli.log_format);
    match cli.command {
        Command::Version => {
            // A closed stdout (`rampart version | head -1`) is no error worth a panic.
            let _ = writeln!(std::io::stdout(), "{BUILD_INFO}");
            ExitCode::SUCCESS
        }
        Command::Check { config } => check(&config),
        Command::Run {
            config,
            until_stdin_closes,
        } => run(&config, until_stdin_closes),
        Command::Dashboard { targets, listen } => dashboard(listen, targets),
        Command::Demo(args) => rampart_demo::run(args),
        Command::DemoService(args) => rampart_demo::serve(args),
    }
}

/// Logs go to stderr, at `level` unless `RUST_LOG` says otherwise.
fn logging(level: LogLevel, format: LogFormat) {
    let level = match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    // `--log-level` is the default directive: it applies only when RUST_LOG is unset, empty, or
    // holds no valid directive. The invalid ones are said through the log once it is up:
    // tracing-subscriber's lossy reading prints them as plain text, which broke a JSON log.
    let mut ignored = Vec::new();
    let mut valid = Vec::new();
    match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(directives) => {
            for directive in directives.split(',').filter(|d| !d.trim().is_empty()) {
                match directive.parse::<Directive>() {
                    Ok(_) => valid.push(directive.to_owned()),
                    Err(err) => ignored.push(format!("ignoring `{directive}`: {err}")),
                }
            }
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            ignored.push("ignoring it whole: it is not UTF-8".to_owned());
        }
        Err(std::env::VarError::NotPresent) => {}
    }
    let filter = EnvFilter::builder()
        .with_default_directive(level.into())
        .parse(valid.join(","))
        .unwrap_or_else(|_| EnvFilter::default().add_directive(level.into()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // The event's fields at the top level, beside `timestamp`, `level`, `target` and
        // `message`: what log collectors index without a nested path.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    for why in ignored {
        tracing::warn!("RUST_LOG: {why}");
    }
}

/// `rampart check`: exit 0 and a summary when the file is valid, exit 2 and every error when not.
fn check(path: &Path) -> ExitCode {
    match Config::from_file(path) {
        Ok(config) => {
            let mut stdout = std::io::stdout().lock();
            let written = writeln!(stdout, "{}: valid", path.display())
                .and_then(|()| write!(stdout, "{}", config.summary()))
                .and_then(|()| stdout.flush());
            match written {
                Err(err) if err.kind() != ErrorKind::BrokenPipe => {
                    let _ = writeln!(std::io::stderr(), "cannot write the summary: {err}");
                    ExitCode::FAILURE
                }
                // A reader that stopped early (`rampart check | head -1`) has what it wanted:
                // the file is valid either way.
                _ => ExitCode::SUCCESS,
            }
        }
        Err(errors) => config_errors(path, &errors),
    }
}

/// `rampart run`: serve until SIGTERM or SIGINT, then drain and exit 0; SIGHUP reloads the file.
/// An invalid configuration exits 2 with every error, logged one event each (printed as `check`
/// prints them when the log would show no error); a listener that cannot bind exits 1.
fn run(path: &Path, until_stdin_closes: bool) -> ExitCode {
    // Before anything takes time: reading a large file does, and a SIGHUP meanwhile (a config
    // watcher, `systemctl reload` right after a start) would otherwise kill the process.
    let early = EarlyReload::hold();
    let config = match Config::from_file(path) {
        Ok(config) => config,
        // Through the log, as everything `run` says, so that a JSON log stays JSON; unless a
        // RUST_LOG naming other targets would leave the log silent.
        Err(errors) if tracing::enabled!(tracing::Level::ERROR) => {
            log_errors(&errors);
            tracing::error!("{}: {}", path.display(), count(&errors));
            return ExitCode::from(2);
        }
        Err(errors) => return config_errors(path, &errors),
    };
    open_file_limit(&config);
    let mut runtime = match config.runtime.worker_threads {
        // One thread: tokio's single-threaded scheduler, on the thread that would otherwise only
        // wait for the runtime to end. It wakes a task without the multi-threaded scheduler's
        // bookkeeping for other workers (queues to steal from, a worker to unpark, timing of
        // batches): 25 to 40 % less CPU per proxied request, measured side by side.
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        threads => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            if let Some(threads) = threads {
                runtime.worker_threads(threads);
            }
            runtime
        }
    };
    runtime.enable_all();
    match runtime.build() {
        Ok(runtime) => {
            let code = runtime.block_on(serve(path, &config, until_stdin_closes, early));
            // Drained: nothing is left to wait for. Dropping the runtime would wait for its
            // blocking threads, and one may be in a name lookup the resolver never answers (a
            // lookup cannot be cancelled) or in the read of a stdin that stays open: the process
            // then outlived its drain by the resolver's timeout, deaf to further signals, since
            // tokio's handlers were still installed.
            runtime.shutdown_background();
            code
        }
        Err(err) => {
            tracing::error!("cannot start the runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    path: &Path,
    config: &Config,
    until_stdin_closes: bool,
    early: EarlyReload,
) -> ExitCode {
    // Installed before the listeners open, so a signal sent as soon as they are announced is
    // neither lost nor, for SIGHUP, fatal.
    let mut signals = match Signals::install() {
        Ok(signals) => signals,
        Err(err) => {
            tracing::error!("cannot install the signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    // A SIGHUP from before: the file read may not have seen what it was sent for.
    let early_reload = early.release();
    // The admin address first: a process that cannot have it stops before it serves anything.
    let admin_tcp = match tokio::net::TcpListener::bind(config.admin.listen).await {
        Ok(tcp) => tcp,
        Err(err) => {
            tracing::error!("admin API cannot listen on {}: {err}", config.admin.listen);
            return ExitCode::FAILURE;
        }
    };
    // The start may take a while (an outbox store to open, a NATS server to reach): a stop
    // signal meanwhile stops it, and a reload asked meanwhile is made once it has started.
    let start = Proxy::start(config);
    tokio::pin!(start);
    let mut reload_asked = early_reload;
    let started = loop {
        tokio::select! {
            started = &mut start => break started,
            signal = signals.next() => match signal {
                Signal::Stop(signal) => {
                    tracing::info!(signal, "stopped while starting");
                    return ExitCode::SUCCESS;
                }
                Signal::Reload => reload_asked = true,
            },
        }
    };
    let proxy = match started {
        Ok(proxy) => proxy,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    for listener in proxy.listeners() {
        tracing::info!(listener = %listener.name, addr = %listener.addr, "listening");
    }
    let handle = proxy.handle();
    // SIGHUP's and the admin API's reloads, one at a time.
    let turn = Arc::new(Mutex::new(()));
    let admin_reload: Reload = {
        let (handle, path, turn) = (handle.clone(), path.to_owned(), turn.clone());
        Arc::new(move || {
            // Not behind a SIGHUP's reload: its read may hang, and this one, made whenever
            // that ends, would have been answered as not ended and then applied unseen.
            let _turn = match turn.try_lock() {
                Ok(turn) => turn,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return Err(ReloadError::Busy),
            };
            reload(&handle, &path)
        })
    };
    // On a blocking thread, as the admin API's are: reading the file may block (a FIFO, a hung
    // network mount), and this loop must go on answering signals meanwhile. At most one waits
    // behind the one under way, and makes the reload for every SIGHUP sent meanwhile: a hung
    // read must not gather a thread per signal. Logged by `reload` either way.
    let waiting = Arc::new(AtomicBool::new(false));
    let sighup = || {
        if waiting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (handle, path, turn) = (handle.clone(), path.to_owned(), turn.clone());
        let waiting = waiting.clone();
        drop(tokio::task::spawn_blocking(move || {
            let _turn = take_turn(&turn);
            waiting.store(false, Ordering::Release);
            // Said before the read, which may block: a reload that never ends is seen begun.
            tracing::info!("SIGHUP: reloading {}", path.display());
            drop(reload(&handle, &path));
        }));
    };
    // `[admin]` is read at start only, as `[runtime]` is.
    let admin = match Admin::start_on(admin_tcp, &config.admin, handle.clone(), admin_reload) {
        Ok(admin) => admin,
        Err(err) => {
            tracing::error!("admin API cannot start on {}: {err}", config.admin.listen);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %admin.addr(), "admin API up");
    if reload_asked {
        sighup();
    }
    let stdin_closed = stdin_closed(until_stdin_closes);
    tokio::pin!(stdin_closed);
    let signal = loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop(signal) => break signal,
                Signal::Reload => sighup(),
            },
            () = &mut stdin_closed => break "stdin closed",
        }
    };
    // `[runtime]` is read at start only, so the drain timeout is the one the proxy started with.
    let drain_timeout = config.runtime.drain_timeout;
    // As the file writes it: Debug would show days as a count of seconds.
    let limit = rampart_config::value::format_duration(drain_timeout);
    tracing::info!(signal, drain_timeout = %limit, "draining");
    // A draining proxy is no longer ready: the admin API goes first.
    admin.shutdown().await;
    // A second stop signal is an operator who will not wait for the drain: what is open is cut
    // at once, as at the drain timeout. What the outbox accepted is stored already.
    let second = async {
        loop {
            if let Signal::Stop(signal) = signals.next().await {
                break signal;
            }
        }
    };
    tokio::select! {
        drain = proxy.shutdown() => match drain {
            Drain::Complete => tracing::info!("drained"),
            Drain::TimedOut => tracing::warn!("drain timeout passed; open connections were cut"),
        },
        signal = second => {
            tracing::warn!(signal, "a second stop signal: the drain is cut short");
        }
    }
    ExitCode::SUCCESS
}

/// Reads a `--target`. clap's own error for a value its parser refuses quotes the value whole:
/// a URL refused for holding a password would be printed with it. This one says only what
/// [`Target::parse`] says, which leaves such a URL out.
#[derive(Clone)]
struct TargetParser;

impl clap::builder::TypedValueParser for TargetParser {
    type Value = Target;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Target, clap::Error> {
        let refused = |message: String| {
            cmd.clone()
                .error(clap::error::ErrorKind::ValueValidation, message)
        };
        let url = value
            .to_str()
            .ok_or_else(|| refused("--target: not UTF-8".to_owned()))?;
        Target::parse(url).map_err(|err| refused(format!("--target: {err}")))
    }
}

/// `rampart dashboard`: serve the fleet view until SIGTERM or SIGINT; exit 1 when it cannot
/// listen.
fn dashboard(listen: SocketAddr, targets: Vec<Target>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let mut signals = match Signals::install() {
            Ok(signals) => signals,
            Err(err) => {
                tracing::error!("cannot install the signal handlers: {err}");
                return ExitCode::FAILURE;
            }
        };
        let names: Vec<&str> = targets.iter().map(Target::name).collect();
        let names = names.join(", ");
        let fleet = match Fleet::start(listen, targets).await {
            Ok(fleet) => fleet,
            Err(err) => {
                tracing::error!("the dashboard cannot listen on {listen}: {err}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(url = %format!("http://{}/", fleet.addr()), targets = %names, "dashboard up");
        // SIGHUP has nothing to reload here: the targets are the command line's.
        let signal = loop {
            if let Signal::Stop(signal) = signals.next().await {
                break signal;
            }
        };
        tracing::info!(signal, "stopping");
        fleet.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// SIGHUP and `POST /api/reload`: reads and validates the file again, and serves it; when it is
/// invalid or cannot be applied, logs why and keeps serving the configuration in force. The
/// summary, or the errors, are also the admin API's answer.
fn reload(proxy: &ProxyHandle, path: &Path) -> Result<String, ReloadError> {
    let read = read_in_time(path).map_err(|why| {
        tracing::error!(
            "reload refused: {}: {why}; the running configuration keeps serving",
            path.display()
        );
        proxy.reload_refused();
        ReloadError::Invalid(format!("{}: {why}", path.display()))
    })?;
    let config = match read {
        Ok(config) => config,
        Err(errors) => {
            proxy.reload_refused();
            log_errors(&errors);
            tracing::error!(
                "reload refused: {}: {}; the running configuration keeps serving",
                path.display(),
                count(&errors)
            );
            return Err(ReloadError::Invalid(errors.to_string()));
        }
    };
    match proxy.reload(&config) {
        Ok(summary) => {
            log_reloaded(path, &summary);
            Ok(summary.to_string())
        }
        Err(err) => {
            tracing::error!(
                "reload refused: {}: {err}; the running configuration keeps serving",
                path.display()
            );
            Err(ReloadError::Refused(err.to_string()))
        }
    }
}

/// How long a reload waits for the file to be read and checked. A FIFO no one writes, or a hung
/// network mount, never ends a read: a reload that waited for it would hold every later one off,
/// the admin API's refused as under way and SIGHUP's queued behind it, until a restart.
const READ_LIMIT: Duration = Duration::from_secs(5);

/// The reads of the file that may hang at once, each on a thread of its own: past them a reload
/// is refused rather than leave one more thread behind.
const HUNG_READS: usize = 4;

/// Reads of the file not ended, hung ones included.
static READS: AtomicUsize = AtomicUsize::new(0);

/// Reads and checks the file on a thread of its own, and waits `READ_LIMIT` for it. A read that
/// hangs cannot be cancelled: it is left behind, and the reload refused, so that the next one,
/// of a file put right meanwhile, is made.
fn read_in_time(path: &Path) -> Result<Result<Config, Errors>, String> {
    let reading = Reading::start().ok_or_else(|| {
        format!(
            "{HUNG_READS} earlier reads of the file have not ended (a FIFO no one writes? a hung \
             mount?); a reload is refused until one ends"
        )
    })?;
    let (read, done) = std::sync::mpsc::channel();
    let owned = path.to_owned();
    std::thread::Builder::new()
        .name("config-read".into())
        .spawn(move || {
            // Counted out when the read ends, however it ends.
            let _reading = reading;
            // The reload may have stopped waiting: nothing is left to tell then.
            let _ = read.send(Config::from_file(&owned));
        })
        .map_err(|err| format!("cannot start a thread to read the file: {err}"))?;
    done.recv_timeout(READ_LIMIT).map_err(|err| match err {
        RecvTimeoutError::Timeout => format!(
            "the file was not read within {}s (a FIFO no one writes? a hung mount?)",
            READ_LIMIT.as_secs()
        ),
        RecvTimeoutError::Disconnected => "reading the file failed unexpectedly".to_owned(),
    })
}

/// One read of the file counted in `READS` while it lives.
struct Reading;

impl Reading {
    /// Counts a read in, unless `HUNG_READS` are under way.
    fn start() -> Option<Reading> {
        READS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < HUNG_READS).then_some(n + 1)
            })
            .ok()
            .map(|_| Reading)
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        READS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The turn of one reload: SIGHUP's and the admin API's are made one at a time.
fn take_turn(turn: &Mutex<()>) -> MutexGuard<'_, ()> {
    turn.lock().unwrap_or_else(PoisonError::into_inner)
}

fn log_reloaded(path: &Path, summary: &ReloadSummary) {
    // Sections that need a restart deserve more than a passing notice.
    if summary.needs_restart.is_empty() {
        tracing::info!("reloaded {}: {summary}", path.display());
    } else {
        tracing::warn!("reloaded {}: {summary}", path.display());
    }
}

/// Returns once standard input is closed (or cannot be read), when `watch`; never otherwise.
async fn stdin_closed(watch: bool) {
    use tokio::io::AsyncReadExt;
    if !watch {
        return std::future::pending().await;
    }
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0; 64];
    while let Ok(1..) = stdin.read(&mut buffer).await {}
}

/// What a signal asks of the running proxy.
// Outside unix, only Ctrl-C stops; nothing reloads.
#[cfg_attr(not(unix), allow(dead_code))]
enum Signal {
    /// SIGTERM or SIGINT (named): drain and exit.
    Stop(&'static str),
    /// SIGHUP: reload the configuration file.
    Reload,
}

/// The signals `rampart run` answers.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// Raises the soft limit of open files as far as the listeners' `max_connections` need (each
/// proxied connection holds two descriptors: the client's and the upstream's), up to the hard
/// limit, as HAProxy does from its `maxconn` and Go's runtime does at every start: systemd's
/// default soft limit, 1024, would hold 500 proxied connections of the default 10,000. Says so
/// when even the hard limit is below that: past it, connections wait in the kernel's queue and
/// upstream connects fail (`overloaded`).
fn open_file_limit(config: &Config) {
    // The admin API's 256 connections, the outbox and the logs besides.
    const RESERVE: u64 = 512;
    let wanted = config
        .listeners
        .iter()
        .map(|listener| u64::from(listener.max_connections) * 2)
        .sum::<u64>()
        + RESERVE;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) if limit < wanted => tracing::warn!(
            limit,
            wanted,
            "the open-file limit is below what the listeners' max_connections allow (two \
             descriptors a proxied connection): past it, new connections wait and upstream \
             connects are answered `overloaded`; raise the hard limit (`ulimit -Hn`, systemd's \
             LimitNOFILE=) or lower max_connections"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!("cannot read or raise the open-file limit: {err}"),
    }
}

/// SIGHUP caught from the start of `run` until the runtime's handlers are installed: its default
/// action ends the process, and a reload asked while the file was being read is made once the
/// proxy has started.
struct EarlyReload {
    asked: Arc<AtomicBool>,
    #[cfg(unix)]
    id: Option<signal_hook::SigId>,
}

impl EarlyReload {
    fn hold() -> EarlyReload {
        let asked = Arc::new(AtomicBool::new(false));
        #[cfg(unix)]
        let id = signal_hook::flag::register(signal_hook::consts::SIGHUP, asked.clone()).ok();
        EarlyReload {
            asked,
            #[cfg(unix)]
            id,
        }
    }

    /// Whether a SIGHUP came; from now on the runtime's handler hears them.
    fn release(self) -> bool {
        #[cfg(unix)]
        if let Some(id) = self.id {
            signal_hook::low_level::unregister(id);
        }
        self.asked.load(Ordering::Acquire)
    }
}

/// Ctrl-C, the one signal outside unix; there is no reload signal there.
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn next(&mut self) -> Signal {
        // Without a handler there is nothing to wait for: stop at once rather than never.
        let _ = tokio::signal::ctrl_c().await;
        Signal::Stop("Ctrl-C")
    }
}

/// Prints every configuration error and their count; exit 2.
fn config_errors(path: &Path, errors: &Errors) -> ExitCode {
    // A closed stderr (`rampart check 2>&1 | head -1`) changes nothing: the file is invalid.
    let _ = writeln!(
        std::io::stderr(),
        "{errors}\n{}: {}",
        path.display(),
        count(errors)
    );
    ExitCode::from(2)
}

// One event per error of a configuration, each as `rampart check` prints it.
fn log_errors(errors: &Errors) {
    for error in errors {
        tracing::error!("{error}");
    }
}

// "1 error", "3 errors".
fn count(errors: &Errors) -> String {
    let n = errors.len();
    format!("{n} error{}", if n == 1 { "" } else { "s" })
}
