//! Long-running processes a test starts and always stops: the `port-demux exporter`, a real
//! Prometheus scraping it (Debian's `prometheus`, installed by `cargo xtask setup`), and a
//! plain HTTP GET to talk to both.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// A child process killed (SIGKILL) and reaped on drop, also when the test panics.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Child,
}

impl Service {
    /// Starts `cmd` (its stdout piped, its stderr inherited so that a failing test shows it).
    ///
    /// # Panics
    /// When it cannot be started.
    #[must_use]
    pub fn start(name: &str, mut cmd: Command) -> Self {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Self {
            name: name.to_owned(),
            child,
        }
    }

    /// The lines of the process's stdout as they come, read by a thread (so that it never
    /// blocks on a full pipe); the channel closes when stdout does.
    ///
    /// # Panics
    /// When stdout was taken already.
    #[must_use]
    pub fn lines(&mut self) -> Lines {
        let stdout: ChildStdout = self.child.stdout.take().expect("stdout not taken yet");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            // Read to the end even when nobody listens any more: the process must not get
            // EPIPE for output nobody asked for.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        Lines {
            name: self.name.clone(),
            rx,
        }
    }

    /// The first line the process printed on stdout (the rest is read and dropped).
    ///
    /// # Panics
    /// When stdout was taken already or it printed no line within [`crate::TIMEOUT`].
    #[must_use]
    pub fn first_line(&mut self) -> String {
        self.lines().next(crate::TIMEOUT)
    }

    /// Asserts that the process is still running (it did not crash).
    ///
    /// # Panics
    /// When it has exited.
    pub fn assert_running(&mut self) {
        let status = self.child.try_wait().expect("waitpid");
        assert!(status.is_none(), "{} exited: {status:?}", self.name);
    }

    /// Its pid.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

/// Lines of a [`Service`]'s stdout.
#[derive(Debug)]
pub struct Lines {
    name: String,
    rx: mpsc::Receiver<String>,
}

impl Lines {
    /// The next line, waiting at most `wait`.
    ///
    /// # Panics
    /// When none came in time or stdout closed.
    #[must_use]
    pub fn next(&self, wait: Duration) -> String {
        self.rx
            .recv_timeout(wait)
            .unwrap_or_else(|e| panic!("no line from {} within {wait:?}: {e}", self.name))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port on 127.0.0.1 free at the time of the call (bound, then released).
///
/// # Panics
/// When no port can be bound.
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET path` from `addr` over HTTP/1.1: the status code and the body; `None` when the
/// connection fails (a server not up yet).
#[must_use]
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((code, body))
}

/// The body of a chunked response.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encoding of a URL query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// How long Prometheus may take to start, scrape and answer a query the way a test waits for:
/// its start-up (a few seconds on a loaded machine) plus scrapes a second apart.
pub const PROMETHEUS_TIMEOUT: Duration = Duration::from_mins(1);

/// Prometheus started from its binary on a free port, scraping `targets` every second (or as
/// told), its storage in a fresh folder; killed and its folder removed on drop.
#[derive(Debug)]
pub struct Prometheus {
    // Killed before the folder goes.
    service: Service,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` scraping `target` (`HOST:PORT`) as job `job`, and waits until it
    /// answers queries.
    ///
    /// # Panics
    /// When `prometheus` is not installed (`cargo xtask setup` installs it) or does not start.
    #[must_use]
    pub fn start(job: &str, target: SocketAddr) -> Self {
        Self::start_every(job, target, 1)
    }

    /// [`Self::start`] with a scrape every `seconds` (and as long a scrape timeout): for an
    /// exporter that reads several instances, whose scrape a loaded machine (and a debug
    /// build) can stretch past a second.
    ///
    /// # Panics
    /// As [`Self::start`].
    #[must_use]
    pub fn start_every(job: &str, target: SocketAddr, seconds: u32) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "pdt-prometheus-{}-{}",
            std::process::id(),
            crate::netns::unique()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).expect("creating Prometheus's folder");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {seconds}s\n  scrape_timeout: {seconds}s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("writing prometheus.yml");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .current_dir(&dir);
        let mut prometheus = Self {
            service: Service::start("prometheus", cmd),
            addr,
            dir,
        };
        let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
        while http_get(addr, "/-/ready").is_none_or(|(code, _)| code != 200) {
            prometheus.service.assert_running();
            assert!(Instant::now() < deadline, "Prometheus did not get ready");
            thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// Runs an instant `query` through `/api/v1/query`: each result's labels and value.
    ///
    /// # Panics
    /// When Prometheus does not answer or refuses the query.
    #[must_use]
    pub fn query(&self, query: &str) -> Vec<(Value, f64)> {
        let (code, body) = http_get(self.addr, &format!("/api/v1/query?query={}", encode(query)))
            .unwrap_or_else(|| panic!("Prometheus did not answer {query}"));
        let doc: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{query}: {e}: {code} {body}"));
        assert_eq!(doc["status"], "success", "{query}: {body}");
        doc["data"]["result"]
            .as_array()
            .expect("a vector result")
            .iter()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// The single value of `query`, `None` when it has no result yet.
    ///
    /// # Panics
    /// When it has several.
    #[must_use]
    pub fn value(&self, query: &str) -> Option<f64> {
        let results = self.query(query);
        assert!(results.len() <= 1, "{query}: several results {results:?}");
        results.first().map(|r| r.1)
    }

    /// Polls `query` until its single value is `want` (within [`PROMETHEUS_TIMEOUT`]).
    ///
    /// # Panics
    /// On timeout, with the last value.
    pub fn wait_for(&mut self, query: &str, want: f64) {
        let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
        loop {
            let got = self.value(query);
            if got == Some(want) {
                return;
            }
            self.service.assert_running();
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {query} = {want}; last: {got:?}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.service.child.kill();
        let _ = self.service.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A tmux server of its own (private socket) running one command in a detached session of a
/// given size; the command's exit status is written by the pane's shell, and the server is
/// killed on drop.
///
/// The status is not read from tmux: under load tmux 3.3 can miss the child's SIGCHLD and
/// leave the exited command an unreaped zombie whose pane never shows an exit status.
#[derive(Debug)]
pub struct Tmux {
    socket: String,
    config: PathBuf,
    status: PathBuf,
}

impl Tmux {
    /// Starts `command` (one shell word list, run by tmux's shell) in a `width` x `height`
    /// session.
    ///
    /// # Panics
    /// When tmux is not installed or the session cannot be created.
    #[must_use]
    pub fn start(command: &str, width: u16, height: u16) -> Self {
        let socket = format!("pdt-{}-{}", std::process::id(), crate::netns::unique());
        let config = std::env::temp_dir().join(format!("{socket}.tmux.conf"));
        let status = std::env::temp_dir().join(format!("{socket}.status"));
        fs::write(
            &config,
            "set -g remain-on-exit on\nset -g status off\nset -g default-shell /bin/sh\n",
        )
        .expect("writing tmux.conf");
        let command = format!("{command}; echo $? > {}", status.display());
        let tmux = Self {
            socket,
            config,
            status,
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            &command,
        ]);
        tmux
    }

    /// Runs `tmux ARGS` on this server; its stdout.
    ///
    /// # Panics
    /// When it fails.
    #[expect(
        clippy::must_use_candidate,
        reason = "most commands are run for their effect"
    )]
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f"])
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run tmux: {e}"));
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pane's visible lines.
    #[must_use]
    pub fn screen(&self) -> Vec<String> {
        self.run(&["capture-pane", "-p", "-t", "t"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Polls the screen until `done` holds (within `wait`); returns it.
    ///
    /// # Panics
    /// On timeout, showing the last screen.
    pub fn wait_screen(
        &self,
        wait: Duration,
        what: &str,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + wait;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{}\nexit status: {:?}",
                screen.join("\n"),
                self.exit_status()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The command's exit status once it has exited (128 + N for signal N), `None` while it
    /// runs.
    ///
    /// # Panics
    /// When the status file holds something else than a number.
    #[must_use]
    pub fn exit_status(&self) -> Option<i32> {
        let text = fs::read_to_string(&self.status).ok()?;
        // Written by the shell's `echo`: complete once it ends in a newline.
        let text = text.strip_suffix('\n')?;
        Some(text.parse().expect("the shell's exit status"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
        let _ = fs::remove_file(&self.config);
        let _ = fs::remove_file(&self.status);
    }
}
