// Added for flowers_kit (not in evcxr 0.22.0 as published): one rust-analyzer shared by the
// kernels of one user. Licensed as the rest of evcxr.

//! One rust-analyzer per user and machine, shared by evcxr kernels.
//!
//! Upstream evcxr runs rust-analyzer inside every kernel. Its database holds the module trees and
//! trait impls of every crate the kernel's `:dep` lines pull in, from the first `let` on: 0.5 GB
//! for the standard library alone, 1.2 GB for a notebook with a few dozen dependencies. A class
//! whose learners open the same notebook holds that many times over.
//!
//! When `EVCXR_SHARED_ANALYZER` names a path, a kernel sends its analysis requests (source of
//! the analysed crate, variables' types, completions, hover) to the server at
//! `<path>-<build>.sock` instead, `<build>` naming this evcxr build, so that a server of an older
//! build is never asked. The first kernel starts the server
//! (`evcxr_jupyter --shared-analyzer SOCKET`), which holds one database: each kernel's crate is
//! added to one merged crate graph, where the crates they share (the sysroot, the same
//! dependencies) appear once and are analysed once. The server leaves when no kernel has been
//! connected for `EVCXR_SHARED_ANALYZER_IDLE_SECS` (default 300), and exits if one request
//! keeps it busy for `STUCK_LIMIT` (the kernels then start a new one, or analyse on their own).
//!
//! Requests are served one at a time (rust-analyzer's database takes one writer), each a line
//! of JSON. The socket is created in a folder only its owner can enter, and the server refuses
//! lines over `MAX_REQUEST_BYTES`. A kernel whose server goes away falls back to an analysis of
//! its own (`RustAnalyzer::fall_back`).

use crate::rust_analyzer::Completion;
use crate::rust_analyzer::Completions;
use crate::rust_analyzer::Engine;
use crate::rust_analyzer::VariableInfo;
use crate::rust_analyzer::log;
use anyhow::Context;
use anyhow::Result;
use anyhow::anyhow;
use anyhow::bail;
use ra_ap_syntax::TextRange;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

/// The environment variable naming the shared analyzer's socket.
pub(crate) const SOCKET_VARIABLE: &str = "EVCXR_SHARED_ANALYZER";
/// The command-line flag that makes evcxr_jupyter run as the shared analyzer.
pub const SERVER_FLAG: &str = "--shared-analyzer";
/// A request is a crate's source, a few hundred KB at most; anything past this is not a kernel.
const MAX_REQUEST_BYTES: u64 = 64 << 20;
/// How long a kernel waits for a newly started server to listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a kernel waits for one answer before it analyses on its own: a class starting at
/// once queues its first loads (each 1-15 s), so this is long, but a stuck server must not hold
/// a learner's cell for longer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(180);
/// A request that keeps the server busy this long is taken as stuck: the server exits.
const STUCK_LIMIT: Duration = Duration::from_secs(240);

#[derive(Serialize, Deserialize)]
enum Request {
    Open {
        root: PathBuf,
    },
    SetSource {
        source: String,
    },
    TopLevelVariables {
        function: String,
    },
    Completions {
        position: usize,
    },
    Hover {
        start: u32,
        end: u32,
        markdown: bool,
    },
}

/// `Completions` as the server writes them (their kinds are `&'static str` in the kernel).
#[derive(Deserialize)]
struct WireCompletions {
    completions: Vec<WireCompletion>,
    start_offset: usize,
    end_offset: usize,
}

#[derive(Deserialize)]
struct WireCompletion {
    code: String,
    kind: String,
    label: String,
}

impl Request {
    fn kind(&self) -> &'static str {
        match self {
            Request::Open { .. } => "open",
            Request::SetSource { .. } => "set_source",
            Request::TopLevelVariables { .. } => "top_level_variables",
            Request::Completions { .. } => "completions",
            Request::Hover { .. } => "hover",
        }
    }
}

/// Requests slower than this are logged.
const SLOW_REQUEST: Duration = Duration::from_millis(500);

/// The error's text when the connection itself failed (as against an analysis error, or a
/// server that did not answer in time).
const CONNECTION_ERROR: &str = "connection to the shared rust-analyzer lost";

/// Whether `error` says the server went away, so that it may be started again.
pub(crate) fn is_connection_error(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.to_string() == CONNECTION_ERROR)
}

/// The socket of this evcxr build's server for the path `base` (`EVCXR_SHARED_ANALYZER`):
/// `<base>-<build>.sock`, `<build>` a hash of this program's size and modification time.
fn socket_for_this_build(base: &Path) -> Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    let program = std::env::current_exe().context("finding evcxr's own program")?;
    let metadata = std::fs::metadata(&program)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    metadata.len().hash(&mut hasher);
    metadata.modified()?.hash(&mut hasher);
    let mut name = base
        .file_name()
        .context("EVCXR_SHARED_ANALYZER names no file")?
        .to_owned();
    name.push(format!("-{:016x}.sock", hasher.finish()));
    Ok(base.with_file_name(name))
}

/// A kernel's connection to the shared analyzer: one session there.
pub(crate) struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to this build's server for `base` (starting it when none listens) and opens a
    /// session for the crate in `root`. Tried twice: a server that was leaving when this kernel
    /// connected closes the connection, and the second try starts a new one.
    pub(crate) fn connect(base: &Path, root: &Path) -> Result<Client> {
        let socket = socket_for_this_build(base)?;
        match Self::connect_once(&socket, root) {
            Err(error) if is_connection_error(&error) => Self::connect_once(&socket, root),
            result => result,
        }
    }

    fn connect_once(socket: &Path, root: &Path) -> Result<Client> {
        let stream = match UnixStream::connect(socket) {
            Ok(stream) => stream,
            Err(_) => {
                start_server(socket)?;
                let started = Instant::now();
                loop {
                    match UnixStream::connect(socket) {
                        Ok(stream) => break stream,
                        Err(error) if started.elapsed() > START_TIMEOUT => {
                            return Err(error).with_context(|| {
                                format!("no shared rust-analyzer listens at {socket:?}")
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            }
        };
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        let mut client = Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        client.call::<()>(&Request::Open {
            root: root.to_owned(),
        })?;
        Ok(client)
    }

    fn call<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T> {
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        let mut answer = String::new();
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.reader.read_line(&mut answer))
            .and_then(|read| {
                if read == 0 {
                    Err(std::io::ErrorKind::UnexpectedEof.into())
                } else {
                    Ok(read)
                }
            })
            .map_err(|error| match error.kind() {
                // No answer in time: the server is stuck, or too busy to wait for.
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    anyhow!(error).context("the shared rust-analyzer did not answer in time")
                }
                _ => anyhow!(error).context(CONNECTION_ERROR),
            })?;
        match serde_json::from_str::<std::result::Result<T, String>>(&answer) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => bail!("shared rust-analyzer: {message}"),
            Err(error) => Err(anyhow!(error).context(CONNECTION_ERROR)),
        }
    }

    pub(crate) fn set_source(&mut self, source: String) -> Result<()> {
        self.call(&Request::SetSource { source })
    }

    pub(crate) fn top_level_variables(
        &mut self,
        function: &str,
    ) -> Result<HashMap<String, VariableInfo>> {
        self.call(&Request::TopLevelVariables {
            function: function.to_owned(),
        })
    }

    pub(crate) fn completions(&mut self, position: usize) -> Result<Completions> {
        let wire: WireCompletions = self.call(&Request::Completions { position })?;
        Ok(Completions {
            completions: wire
                .completions
                .into_iter()
                .map(|completion| Completion {
                    code: completion.code,
                    // One of the kinds `jupyter_kind` gives, as a &'static str again.
                    kind: ["function", "class", "module", "keyword"]
                        .into_iter()
                        .find(|known| *known == completion.kind)
                        .unwrap_or("instance"),
                    label: completion.label,
                })
                .collect(),
            start_offset: wire.start_offset,
            end_offset: wire.end_offset,
        })
    }

    pub(crate) fn hover(&mut self, range: TextRange, markdown: bool) -> Result<Option<String>> {
        self.call(&Request::Hover {
            start: range.start().into(),
            end: range.end().into(),
            markdown,
        })
    }
}

/// Starts `evcxr_jupyter --shared-analyzer SOCKET` outside this kernel's process tree (so that
/// it outlives the kernel and is not counted as the kernel's), logging to `SOCKET.log`.
fn start_server(socket: &Path) -> Result<()> {
    let program = std::env::current_exe().context("finding evcxr's own program")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(socket.with_extension("log"))
        .with_context(|| format!("opening the shared analyzer's log next to {socket:?}"))?;
    // `setsid --fork` (util-linux) detaches it: a new session, and init as its parent.
    let detached = which::which("setsid").is_ok();
    let mut command = if detached {
        let mut command = std::process::Command::new("setsid");
        command.arg("--fork").arg(&program);
        command
    } else {
        std::process::Command::new(&program)
    };
    use std::os::unix::process::CommandExt;
    let mut child = command
        .arg(SERVER_FLAG)
        .arg(socket)
        // Not the kernel's folder, which may be deleted while the server lives on.
        .current_dir(socket.parent().unwrap_or(Path::new("/")))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {program:?} {SERVER_FLAG}"))?;
    if detached {
        // setsid returns once it has forked; waiting reaps it.
        let _ = child.wait();
    }
    Ok(())
}

/// Closes every inherited file descriptor but standard input, output and error. The kernel
/// script hands its kernel slot's lock (and, while the kit builds, the template's) to evcxr as
/// open descriptors, which a child inherits: a server that kept them would hold that slot, or
/// the template, for as long as it runs.
fn close_inherited_descriptors() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let descriptors: Vec<i32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in descriptors {
        // SAFETY: nothing in this process uses these yet: they were inherited, and this runs
        // first, before the server opens anything of its own (the directory listing's own
        // descriptor is already closed, and closing a closed one only fails).
        unsafe {
            libc::close(fd);
        }
    }
}

/// Runs the shared analyzer on `socket` until it has been idle (no kernel connected) for
/// `EVCXR_SHARED_ANALYZER_IDLE_SECS` seconds. Returns at once if another one serves it.
pub fn serve(socket: &Path) -> Result<()> {
    close_inherited_descriptors();
    // One server per socket: whoever holds the lock owns the socket's path, so a stale socket
    // file (a server that was killed) can be replaced without racing a live server. A server
    // that is leaving (idle) holds it a moment longer: wait for that, not for a live one.
    let lock_path = socket.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {lock_path:?}"))?;
    let asked = Instant::now();
    while lock.try_lock().is_err() {
        if UnixStream::connect(socket).is_ok() || asked.elapsed() > Duration::from_secs(30) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("removing stale {socket:?}")),
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("listening on {socket:?}"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let idle_limit = Duration::from_secs(
        std::env::var("EVCXR_SHARED_ANALYZER_IDLE_SECS")
            .ok()
            .and_then(|secs| secs.parse().ok())
            .unwrap_or(300)
            .max(1),
    );
    log(&format!(
        "evcxr shared analyzer {} listening on {socket:?}",
        std::process::id()
    ));

    let state = Arc::new(Shared {
        engine: Mutex::new(Engine::new(true)),
        activity: Mutex::new(Activity {
            connections: 0,
            last_close: Instant::now(),
            busy_since: None,
        }),
    });
    {
        let state = state.clone();
        let socket = socket.to_owned();
        std::thread::spawn(move || watch(&state, &socket, idle_limit));
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        lock_ignoring_poison(&state.activity).connections += 1;
        let state = state.clone();
        std::thread::spawn(move || {
            serve_kernel(stream, &state);
            let mut activity = lock_ignoring_poison(&state.activity);
            activity.connections -= 1;
            activity.last_close = Instant::now();
        });
    }
    Ok(())
}

struct Shared {
    engine: Mutex<Engine>,
    activity: Mutex<Activity>,
}

struct Activity {
    /// Kernels connected now (accepted connections, whether or not they opened a session).
    connections: usize,
    last_close: Instant,
    /// When the request being answered started, if one is.
    busy_since: Option<Instant>,
}

/// Ends the server when it has been idle long enough, or when one request has kept it busy for
/// `STUCK_LIMIT`. (Holding the activity lock, so that no kernel is accepted in between: a kernel
/// that connects after the socket is gone starts a new server.)
fn watch(state: &Shared, socket: &Path, idle_limit: Duration) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let activity = lock_ignoring_poison(&state.activity);
        let stuck = activity
            .busy_since
            .is_some_and(|since| since.elapsed() > STUCK_LIMIT);
        let idle = activity.connections == 0 && activity.last_close.elapsed() >= idle_limit;
        if stuck || idle {
            let _ = std::fs::remove_file(socket);
            log(if stuck {
                "evcxr shared analyzer: one request has taken too long, leaving"
            } else {
                "evcxr shared analyzer: idle, leaving"
            });
            std::process::exit(if stuck { 1 } else { 0 });
        }
    }
}

fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Answers one kernel's requests until it disconnects, then closes its session.
fn serve_kernel(stream: UnixStream, state: &Shared) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut session = None;
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_REQUEST_BYTES).read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if !line.ends_with('\n') => {
                let _ = reply::<()>(&mut writer, Err("request too long".to_owned()));
                break;
            }
            Ok(_) => {}
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Err(error) => Err(format!("unreadable request: {error}")),
            Ok(request) => {
                let kind = request.kind();
                let asked = Instant::now();
                let mut engine = lock_ignoring_poison(&state.engine);
                let waited = asked.elapsed();
                lock_ignoring_poison(&state.activity).busy_since = Some(Instant::now());
                // rust-analyzer may panic on code it cannot handle; that ends this request,
                // not the server and every other kernel's analysis.
                let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    answer(&mut engine, &mut session, request)
                }))
                .unwrap_or_else(|_| Err("rust-analyzer panicked on this request".to_owned()));
                lock_ignoring_poison(&state.activity).busy_since = None;
                // The log says where a slow cell's time went: queueing behind other kernels,
                // or the analysis itself.
                if asked.elapsed() > SLOW_REQUEST {
                    log(&format!(
                        "evcxr shared analyzer: {kind} took {:.1} s ({:.1} s waiting for other kernels' requests)",
                        asked.elapsed().as_secs_f64(),
                        waited.as_secs_f64()
                    ));
                }
                answer
            }
        };
        if reply(&mut writer, answer).is_err() {
            break;
        }
    }
    if let Some(id) = session {
        let mut engine = lock_ignoring_poison(&state.engine);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.close(id)));
    }
}

fn answer(
    engine: &mut Engine,
    session: &mut Option<crate::rust_analyzer::SessionId>,
    request: Request,
) -> std::result::Result<serde_json::Value, String> {
    let text = |error: anyhow::Error| format!("{error:#}");
    let json =
        |value: Result<serde_json::Value, serde_json::Error>| value.map_err(|e| e.to_string());
    let current = |session: &Option<crate::rust_analyzer::SessionId>| {
        session.ok_or_else(|| "no session: send Open first".to_owned())
    };
    match request {
        Request::Open { root } => {
            if let Some(old) = session.take() {
                engine.close(old);
            }
            *session = Some(engine.open(&root).map_err(text)?);
            Ok(serde_json::Value::Null)
        }
        Request::SetSource { source } => {
            engine.set_source(current(session)?, source).map_err(text)?;
            Ok(serde_json::Value::Null)
        }
        Request::TopLevelVariables { function } => json(serde_json::to_value(
            engine.top_level_variables(current(session)?, &function),
        )),
        Request::Completions { position } => json(serde_json::to_value(
            engine
                .completions(current(session)?, position)
                .map_err(text)?,
        )),
        Request::Hover {
            start,
            end,
            markdown,
        } => {
            if start > end {
                return Err("hover range ends before it starts".to_owned());
            }
            let range = TextRange::new(start.into(), end.into());
            json(serde_json::to_value(
                engine
                    .hover(current(session)?, range, markdown)
                    .map_err(text)?,
            ))
        }
    }
}

fn reply<T: Serialize>(
    writer: &mut UnixStream,
    answer: std::result::Result<T, String>,
) -> std::io::Result<()> {
    let mut line = serde_json::to_string(&answer).map_err(std::io::Error::other)?;
    line.push('\n');
    writer.write_all(line.as_bytes())
}
