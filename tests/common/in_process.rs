//! The real server in-process: `webhookd::run_with` on a thread of the
//! test, on a storage of the test's choosing, stopped as on SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::thread::JoinHandle;
use std::time::Duration;

use clap::Parser;
use webhookd::RunOptions;
use webhookd::cli::Config;
use webhookd::store::StorageOpener;

use super::{DEADLINE, READY_DEADLINE, poll_until};

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
