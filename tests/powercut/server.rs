//! The real server, run in-process on a storage of the test's choosing,
//! and a small keep-alive HTTP client for it.

use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::thread::JoinHandle;
use std::time::Duration;

use clap::Parser;
use webhookd::RunOptions;
use webhookd::cli::Config;
use webhookd::store::StorageOpener;

use crate::common::{DEADLINE, READY_DEADLINE, Response, poll_until, try_read_response};

/// The real server on a thread of this process.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), webhookd::Error>>>,
}

impl Server {
    /// Starts webhookd on `data_dir` with its file on `opener`'s storage.
    pub fn start(data_dir: &Path, opener: impl StorageOpener + 'static, extra: &[&str]) -> Server {
        let mut args = vec!["webhookd", "--data-dir", data_dir.to_str().unwrap()];
        args.extend(["--listen", "127.0.0.1:0"]);
        args.extend(extra);
        let config = Config::try_parse_from(args).expect("valid arguments");
        let (shutdown, requested) = tokio::sync::oneshot::channel::<()>();
        let options = RunOptions::default()
            .storage(opener)
            .shutdown_on(async move {
                let _ = requested.await;
            });
        let (ready, bound) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            webhookd::run_with(&config, options, move |addr| {
                let _ = ready.send(addr);
            })
        });
        match bound.recv_timeout(READY_DEADLINE) {
            Ok(addr) => Server {
                addr,
                shutdown: Some(shutdown),
                thread: Some(thread),
            },
            Err(RecvTimeoutError::Disconnected) => {
                panic!("webhookd did not start: {:?}", thread.join())
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("webhookd did not become ready within {READY_DEADLINE:?}")
            }
        }
    }

    /// Graceful shutdown, as on SIGTERM; returns how it ended.
    pub fn stop(mut self) -> Result<(), webhookd::Error> {
        let _ = self.shutdown.take().expect("running").send(());
        let thread = self.thread.take().expect("running");
        poll_until(DEADLINE, "webhookd to shut down", || {
            thread.is_finished().then_some(())
        });
        thread.join().expect("webhookd did not panic")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // Joined if it ends in time; a test that already failed must not hang.
        if let Some(thread) = self.thread.take() {
            let deadline = std::time::Instant::now() + DEADLINE;
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// One kept-alive connection, reopened after a failure.
pub struct Client {
    addr: SocketAddr,
    stream: Option<TcpStream>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, stream: None }
    }

    /// POSTs a webhook body.
    pub fn post(&mut self, body: &str) -> io::Result<Response> {
        let request = format!(
            "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.exchange(request.as_bytes())
    }

    /// GETs a path.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.exchange(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
    }

    fn exchange(&mut self, request: &[u8]) -> io::Result<Response> {
        let result = self.try_exchange(request);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn try_exchange(&mut self, request: &[u8]) -> io::Result<Response> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            stream.set_write_timeout(Some(Duration::from_secs(30)))?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(request)?;
        let response = try_read_response(stream)?;
        if response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.stream = None;
        }
        Ok(response)
    }
}
