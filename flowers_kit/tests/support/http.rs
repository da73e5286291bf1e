//! A tiny HTTP/1.1 file server on 127.0.0.1 with scripted misbehaviour.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// How the server treats requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Honours `Range: bytes=N-` with 206.
    Normal,
    /// Ignores `Range` and always sends the whole file with 200.
    NoRange,
    /// Like `Normal`, but the first response for a file announces its full length and closes
    /// the connection after this many bytes.
    CutFirstAfter(usize),
    /// Answers every request with this status and no body.
    Status(u16),
    /// Answers every request with a redirect to the same path: a redirect loop.
    RedirectToSelf,
    /// Sends the headers at once, then the body `bytes` at a time with a pause of `every`
    /// between writes (a slow or stalled line).
    Trickle {
        /// Bytes per write.
        bytes: usize,
        /// Pause before each write.
        every: std::time::Duration,
    },
    /// Answers 200 without a length and sends the file over and over, forever.
    Endless,
    /// Announces the whole file's length but always closes after this many bytes.
    AlwaysCutAfter(usize),
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Request path.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

/// URL path → bytes, shared with the connection threads so a test can change a file.
type Files = Arc<Mutex<HashMap<String, Arc<Vec<u8>>>>>;

/// A running server; it lives until the test process ends.
pub struct Server {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    files: Files,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl Server {
    /// Serves `files` (URL path → bytes) with the given behaviour.
    pub fn start(files: HashMap<String, Arc<Vec<u8>>>, behaviour: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let files: Files = Arc::new(Mutex::new(files));
        let served = files.clone();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let current = behaviour.clone();
        let cut_done = Arc::new(Mutex::new(false));
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (files, log, cut_done) = (served.clone(), log.clone(), cut_done.clone());
                let behaviour = *current.lock().unwrap();
                thread::spawn(move || {
                    let _ = handle(stream, &files, behaviour, &log, &cut_done);
                });
            }
        });
        Server {
            base,
            seen,
            files,
            behaviour,
        }
    }

    /// Serves `bytes` at `/name` from now on (a server that was fixed, or changed a file).
    pub fn set_file(&self, name: &str, bytes: Vec<u8>) {
        self.files
            .lock()
            .unwrap()
            .insert(format!("/{name}"), Arc::new(bytes));
    }

    /// Behaves as `behaviour` for the requests that follow.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Serves one file at `/name`.
    pub fn one(name: &str, bytes: Vec<u8>, behaviour: Behaviour) -> Server {
        let mut files = HashMap::new();
        files.insert(format!("/{name}"), Arc::new(bytes));
        Server::start(files, behaviour)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The URL of `/name`.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }
}

fn handle(
    stream: TcpStream,
    files: &Mutex<HashMap<String, Arc<Vec<u8>>>>,
    behaviour: Behaviour,
    log: &Mutex<Vec<Seen>>,
    cut_done: &Mutex<bool>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let mut out = stream;
    if let Behaviour::Status(code) = behaviour {
        return write!(
            out,
            "HTTP/1.1 {code} Scripted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
    if behaviour == Behaviour::RedirectToSelf {
        return write!(
            out,
            "HTTP/1.1 302 Found\r\nLocation: {path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
    let Some(body) = files.lock().unwrap().get(&path).cloned() else {
        return write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    };
    let total = body.len();
    let start = match (&range, behaviour) {
        (_, Behaviour::NoRange) => None,
        (Some(r), _) => r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|s| s.parse::<usize>().ok()),
        (None, _) => None,
    };
    if let Some(start) = start {
        if start >= total {
            return write!(
                out,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
        write!(
            out,
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{total}\r\nConnection: close\r\n\r\n",
            total - start,
            total - 1
        )?;
        return send_body(out, &body[start..], behaviour);
    }
    if behaviour == Behaviour::Endless {
        write!(out, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
        loop {
            out.write_all(&body)?;
        }
    }
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nAccept-Ranges: {}\r\nConnection: close\r\n\r\n",
        if behaviour == Behaviour::NoRange { "none" } else { "bytes" }
    )?;
    if let Behaviour::CutFirstAfter(n) = behaviour {
        let mut done = cut_done.lock().unwrap();
        if !*done {
            *done = true;
            out.write_all(&body[..n.min(total)])?;
            out.flush()?;
            return out.shutdown(std::net::Shutdown::Both);
        }
    }
    send_body(out, &body, behaviour)
}

/// Writes a response body as `behaviour` says.
fn send_body(mut out: TcpStream, body: &[u8], behaviour: Behaviour) -> std::io::Result<()> {
    match behaviour {
        Behaviour::AlwaysCutAfter(n) => {
            out.write_all(&body[..n.min(body.len())])?;
            out.flush()?;
            out.shutdown(std::net::Shutdown::Both)
        }
        Behaviour::Trickle { bytes, every } => {
            for chunk in body.chunks(bytes.max(1)) {
                thread::sleep(every);
                out.write_all(chunk)?;
                out.flush()?;
            }
            Ok(())
        }
        _ => out.write_all(body),
    }
}
