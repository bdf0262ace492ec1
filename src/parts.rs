//! The threads and tasks behind the server, started and stopped in order:
//! the writer; the scheduler; with `--deliver-to` the dispatcher and the
//! bulk redelivery worker; with `--retention` retention.

use std::sync::Arc;

use crate::cli::Config;
use crate::delivery::redeliveries::RedeliveryWorker;
use crate::delivery::{DeliveryConfig, DeliveryStatus, Dispatcher};
use crate::heartbeat::Heartbeat;
use crate::retention::Retention;
use crate::scheduler::{self, Processor, Scheduler};
use crate::store::Store;
use crate::store::writer::{self, WriterHandle, WriterThread};
use crate::{Error, metrics};

pub(crate) struct Parts {
    pub(crate) writer: WriterHandle,
    writer_thread: WriterThread,
    scheduler: Scheduler,
    retention: Option<Retention>,
    pub(crate) delivery: Option<Delivering>,
}

/// The delivery parts.
pub(crate) struct Delivering {
    dispatcher: Dispatcher,
    pub(crate) status: DeliveryStatus,
    pub(crate) redeliveries: RedeliveryWorker,
}

impl Parts {
    /// What the systemd watchdog watches: the writer's and the
    /// scheduler's progress marks.
    pub(crate) fn heartbeats(&self) -> Vec<(&'static str, Heartbeat)> {
        vec![
            ("store writer", self.writer.heartbeat()),
            ("scheduler", self.scheduler.heartbeat()),
        ]
    }

    /// Starts the writer, the dispatcher and the redelivery worker (with
    /// `--deliver-to`), the scheduler and (with `--retention`) retention.
    /// If one cannot start, those already started are stopped in order.
    pub(crate) fn start(
        config: &Config,
        store: &Store,
        metrics: &Arc<metrics::Metrics>,
        delivery: Option<&DeliveryConfig>,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<Parts, Error> {
        let (waker, nudged) = scheduler::waker();
        let (writer, writer_thread) = writer::spawn_delivering(
            store.clone(),
            config.process_delay,
            usize::try_from(config.queue_depth).unwrap_or(usize::MAX),
            Arc::clone(metrics),
            delivery.map(|d| Arc::clone(&d.schedule)),
            {
                let waker = waker.clone();
                move |due| waker.new_job_due(due)
            },
        )?;
        let stop_writer = |writer: WriterHandle, thread: WriterThread| {
            drop(writer);
            let _ = thread.join();
        };
        let (processor, delivering) = match delivery {
            None => (Processor::Complete(writer.clone()), None),
            Some(config) => {
                let _entered = runtime.enter();
                let wake = waker.clone();
                let (dispatcher, gate, status) = Dispatcher::start(
                    config,
                    store.clone(),
                    writer.clone(),
                    Arc::clone(metrics),
                    Box::new(move || wake.nudge()),
                );
                let redeliveries = match RedeliveryWorker::start(store.clone(), writer.clone()) {
                    Ok(worker) => worker,
                    Err(source) => {
                        runtime.block_on(dispatcher.shutdown(tokio::time::Instant::now()));
                        stop_writer(writer, writer_thread);
                        return Err(Error::Start {
                            what: "redelivery worker",
                            source,
                        });
                    }
                };
                (
                    Processor::Deliver(gate),
                    Some(Delivering {
                        dispatcher,
                        status,
                        redeliveries,
                    }),
                )
            }
        };
        let scheduler = match Scheduler::start_with(store.clone(), processor, waker, nudged) {
            Ok(scheduler) => scheduler,
            Err(source) => {
                if let Some(delivering) = delivering {
                    delivering.stop(runtime, tokio::time::Instant::now());
                }
                stop_writer(writer, writer_thread);
                return Err(Error::Start {
                    what: "scheduler",
                    source,
                });
            }
        };
        let retention = match config
            .retention
            .map(|age| Retention::start(writer.clone(), age, config.dedup_window))
            .transpose()
        {
            Ok(retention) => retention,
            Err(source) => {
                scheduler.stop();
                if let Some(delivering) = delivering {
                    delivering.stop(runtime, tokio::time::Instant::now());
                }
                stop_writer(writer, writer_thread);
                return Err(Error::Start {
                    what: "retention",
                    source,
                });
            }
        };
        Ok(Parts {
            writer,
            writer_thread,
            scheduler,
            retention,
            delivery: delivering,
        })
    }

    /// Stops the parts that hold writer handles (the scheduler first, so
    /// nothing new is handed to the dispatcher; delivery attempts in flight
    /// get until `deadline`), then waits for the writer to drain its queue
    /// and exit.
    pub(crate) fn stop(
        self,
        runtime: &tokio::runtime::Runtime,
        deadline: tokio::time::Instant,
    ) -> Result<(), Error> {
        drop(self.writer);
        self.scheduler.stop();
        if let Some(delivering) = self.delivery {
            delivering.stop(runtime, deadline);
        }
        if let Some(retention) = self.retention {
            retention.stop();
        }
        self.writer_thread.join().map_err(|_| Error::WriterPanicked)
    }
}

impl Delivering {
    fn stop(self, runtime: &tokio::runtime::Runtime, deadline: tokio::time::Instant) {
        self.redeliveries.stop();
        runtime.block_on(self.dispatcher.shutdown(deadline));
    }
}
