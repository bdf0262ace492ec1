//! Micro-benchmarks of the store: durable group commits of 1, 64 and 512
//! accepts through the real writer, and a point lookup by id. Beside them,
//! in the same run, the floors under a commit of one: the disk (one 4 KiB
//! page overwritten in place and fdatasync'd) and redb itself (one 200-byte value under a
//! sequential key in a one-table file, one durable commit), which no
//! layout of ours can go below.
//!
//! Run: `cargo bench --bench store`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::task::JoinSet;
use webhookd::model::{Currency, NewTransaction, parse_amount};
use webhookd::store::Store;
use webhookd::store::writer::{self, AcceptOutcome};

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn transaction() -> NewTransaction {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    NewTransaction {
        transaction_id: format!("txn_{n:016x}_bench"),
        source_account: "acc_user_789".to_owned(),
        destination_account: "acc_merchant_456".to_owned(),
        amount: parse_amount("1500.50").expect("valid amount"),
        currency: Currency::parse("INR").expect("valid currency"),
    }
}

fn commits(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open store");
    let (writer, thread) =
        writer::spawn(store, Duration::from_secs(30), 4096, Arc::default(), |_| {})
            .expect("writer thread");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("commit");
    for batch in [1_usize, 64, 512] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                runtime.block_on(async {
                    // All accepts are queued before the first answer is
                    // awaited, so the writer takes them as one or two batches.
                    let mut pending = JoinSet::new();
                    for _ in 0..batch {
                        let writer = writer.clone();
                        pending.spawn(async move { writer.accept(transaction()).await });
                    }
                    while let Some(done) = pending.join_next().await {
                        let outcome = done.expect("task").expect("stored");
                        assert_eq!(outcome, AcceptOutcome::Created);
                    }
                });
            });
        });
    }
    group.finish();
    drop(writer);
    thread.join().expect("writer thread");
}

fn lookups(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open store");
    let (writer, thread) = writer::spawn(
        store.clone(),
        Duration::from_secs(30),
        4096,
        Arc::default(),
        |_| {},
    )
    .expect("writer");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let ids: Vec<String> = runtime.block_on(async {
        let mut ids = Vec::new();
        for _ in 0..20 {
            let mut pending = JoinSet::new();
            for _ in 0..1000 {
                let writer = writer.clone();
                let tx = transaction();
                ids.push(tx.transaction_id.clone());
                pending.spawn(async move { writer.accept(tx).await });
            }
            while let Some(done) = pending.join_next().await {
                done.expect("task").expect("stored");
            }
        }
        ids
    });
    drop(writer);
    thread.join().expect("writer thread");
    let mut n = 0;
    c.bench_function("lookup_by_id_20k_rows", |b| {
        b.iter(|| {
            n = (n + 7919) % ids.len();
            black_box(store.get(&ids[n]).expect("read").expect("present"));
        });
    });
}

fn floors(c: &mut Criterion) {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("floor");
    // One page overwritten in place: no block allocation, no size change.
    let file = std::fs::File::create(dir.path().join("plain")).expect("file");
    let page = [7_u8; 4096];
    file.write_all_at(&page, 0).expect("write");
    file.sync_all().expect("fsync");
    group.bench_function("disk_4KiB_overwrite_fdatasync", |b| {
        b.iter(|| {
            file.write_all_at(&page, 0).expect("write");
            file.sync_data().expect("fdatasync");
        });
    });
    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
    // The page cache webhookd gives redb.
    let db = redb::Database::builder()
        .set_cache_size(webhookd::store::CACHE_BYTES)
        .create(dir.path().join("floor.redb"))
        .expect("redb");
    let value = [7_u8; 200];
    let mut key = 0_u64;
    group.bench_function("redb_one_insert_durable_commit", |b| {
        b.iter(|| {
            let txn = db.begin_write().expect("begin");
            txn.open_table(table)
                .expect("table")
                .insert(key, value.as_slice())
                .expect("insert");
            txn.commit().expect("commit");
            key += 1;
        });
    });
    group.finish();
}

criterion_group!(benches, floors, commits, lookups);
criterion_main!(benches);
