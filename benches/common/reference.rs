//! Reference servers the ingest bench runs in the same minute as webhookd,
//! to show where its figures stand against what this machine allows. Each
//! is this bench binary started again with [`REFERENCE_FLAG`]; each parses
//! and validates the JSON exactly like webhookd and answers 202.
//!
//! - `none`: stores nothing: the ceiling of the load generator and HTTP
//!   together on this machine (the client shares its cores).
//! - `file`: one writer thread copies each batch of bodies into a file
//!   that was filled with zeros at start-up, in place and in arrival order,
//!   then `fdatasync`s once per batch and answers the batch: the cheapest
//!   durable design there is on this disk (no database, no index, no
//!   metadata change per sync).
//! - `redb`: one writer thread inserts each batch of bodies into one redb
//!   table under sequential keys and commits it durably: the floor of any
//!   design built on redb. Its page cache is webhookd's
//!   ([`webhookd::store::CACHE_BYTES`]), not redb's default of 1 GiB.
//! - `redb-process`: as `redb`, and each batch also rewrites, in place,
//!   every stored body accepted at least 1 s before (its last byte set to
//!   mark it processed): the floor of a redb design that stores and then
//!   processes every transaction once, as the sustained bench asks.
//!   `WEBHOOKD_BENCH_PROCESS_AFTER` (humantime, default `1s`) sets that
//!   age, e.g. `30s` to match webhookd's default delay.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

pub const REFERENCE_FLAG: &str = "--reference-server";

/// Bodies a writer takes from its queue into one batch at most, as webhookd.
const MAX_BATCH: usize = 2048;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    NoStorage,
    File,
    Redb,
    RedbProcess,
}

impl Reference {
    pub fn name(self) -> &'static str {
        match self {
            Reference::NoStorage => "none",
            Reference::File => "file",
            Reference::Redb => "redb",
            Reference::RedbProcess => "redb-process",
        }
    }

    fn from_name(name: &str) -> Reference {
        [
            Reference::NoStorage,
            Reference::File,
            Reference::Redb,
            Reference::RedbProcess,
        ]
        .into_iter()
        .find(|r| r.name() == name)
        .unwrap_or_else(|| panic!("unknown reference server {name}"))
    }
}

/// One accepted body waiting for its batch to be durable.
type Pending = (Bytes, oneshot::Sender<()>);

/// Makes one batch durable.
type Sink = Box<dyn FnMut(&[Pending]) + Send>;

/// If this process was started as a reference server, serve until killed
/// and never return. Arguments: `--reference-server KIND [PATH BYTES]`.
pub fn run_if_asked() {
    let args: Vec<String> = std::env::args().collect();
    let Some(at) = args.iter().position(|a| a == REFERENCE_FLAG) else {
        return;
    };
    let kind = Reference::from_name(&args[at + 1]);
    let writer = match kind {
        Reference::NoStorage => None,
        Reference::File | Reference::Redb | Reference::RedbProcess => {
            let path = PathBuf::from(&args[at + 2]);
            let bytes: u64 = args[at + 3].parse().expect("file size in bytes");
            Some(spawn_writer(kind, &path, bytes))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(serve(writer));
    unreachable!("a reference server runs until killed");
}

async fn serve(writer: Option<mpsc::Sender<Pending>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    eprintln!("listening on {}", listener.local_addr().expect("addr"));
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        let _ = stream.set_nodelay(true);
        let writer = writer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|request: Request<hyper::body::Incoming>| {
                let writer = writer.clone();
                async move {
                    let body = request.into_body().collect().await?.to_bytes();
                    let (status, text) = match webhookd::model::parse_payload(&body) {
                        Ok(tx) => {
                            if let Some(writer) = writer {
                                let (done, stored) = oneshot::channel();
                                writer.send((body, done)).await.expect("writer running");
                                stored.await.expect("writer answers");
                            }
                            (
                                StatusCode::ACCEPTED,
                                format!(
                                    r#"{{"transaction_id":{},"status":"PROCESSING","duplicate":false}}"#,
                                    serde_json::to_string(&tx.transaction_id).expect("string")
                                ),
                            )
                        }
                        Err(_) => (StatusCode::UNPROCESSABLE_ENTITY, String::from("{}")),
                    };
                    let mut response = hyper::Response::new(Full::new(Bytes::from(text)));
                    *response.status_mut() = status;
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, hyper::Error>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Starts the writer thread of a durable reference server; `bytes` sizes
/// the zero-filled file of `file` (unused by `redb`).
fn spawn_writer(kind: Reference, path: &Path, bytes: u64) -> mpsc::Sender<Pending> {
    let (sender, receiver) = mpsc::channel(4096);
    let mut sink: Sink = match kind {
        Reference::File => Box::new(file_sink(path, bytes)),
        Reference::Redb => Box::new(redb_sink(path, None)),
        Reference::RedbProcess => {
            let after = std::env::var("WEBHOOKD_BENCH_PROCESS_AFTER")
                .map_or(Duration::from_secs(1), |age| {
                    humantime::parse_duration(&age).expect("WEBHOOKD_BENCH_PROCESS_AFTER")
                });
            Box::new(redb_sink(path, Some(after)))
        }
        Reference::NoStorage => unreachable!("no writer without storage"),
    };
    std::thread::spawn(move || {
        let mut receiver: mpsc::Receiver<Pending> = receiver;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while receiver.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
            sink(&batch);
            for (_, done) in batch.drain(..) {
                let _ = done.send(());
            }
        }
    });
    sender
}

/// Fills the file with zeros (synced) so that each batch later overwrites
/// allocated blocks in place, then returns the batch writer.
fn file_sink(path: &Path, bytes: u64) -> impl FnMut(&[Pending]) + Send + use<> {
    let file = File::create(path).expect("create floor file");
    let zeros = vec![0_u8; 1 << 20];
    let mut written = 0;
    while written < bytes {
        file.write_all_at(&zeros, written).expect("fill floor file");
        written += zeros.len() as u64;
    }
    file.sync_all().expect("sync floor file");
    let mut offset = 0_u64;
    let mut buf = Vec::new();
    move |batch: &[Pending]| {
        buf.clear();
        for (body, _) in batch {
            buf.extend_from_slice(body);
            buf.push(b'\n');
        }
        file.write_all_at(&buf, offset).expect("write batch");
        file.sync_data().expect("fdatasync batch");
        offset += buf.len() as u64;
    }
}

/// Inserts each batch; with `process_after`, also rewrites the bodies
/// accepted at least that long before, oldest first, in the same commit.
fn redb_sink(
    path: &Path,
    process_after: Option<Duration>,
) -> impl FnMut(&[Pending]) + Send + use<> {
    const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
    // The page cache webhookd gives redb, so both use the same memory.
    let db = Database::builder()
        .set_cache_size(webhookd::store::CACHE_BYTES)
        .create(path)
        .expect("create floor database");
    let mut key = 0_u64;
    let mut waiting: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut value = Vec::new();
    move |batch: &[Pending]| {
        let txn = db.begin_write().expect("begin");
        {
            let mut table = txn.open_table(BODIES).expect("table");
            let first = key + 1;
            for (body, _) in batch {
                key += 1;
                value.clear();
                value.extend_from_slice(body);
                value.push(b'P');
                table.insert(key, value.as_slice()).expect("insert");
            }
            if let Some(delay) = process_after {
                let now = Instant::now();
                waiting.extend((first..=key).map(|k| (now, k)));
                while let Some(&(at, due_key)) = waiting.front() {
                    if now.duration_since(at) < delay {
                        break;
                    }
                    waiting.pop_front();
                    let stored = table
                        .get(due_key)
                        .expect("get")
                        .expect("stored")
                        .value()
                        .to_vec();
                    value.clear();
                    value.extend_from_slice(&stored[..stored.len() - 1]);
                    value.push(b'D');
                    table.insert(due_key, value.as_slice()).expect("rewrite");
                }
            }
        }
        txn.commit().expect("durable commit");
    }
}
