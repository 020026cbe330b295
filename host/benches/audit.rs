//! Durable audit appends: throughput with group commit and the commit
//! latency an event waits for.
//!
//! ```text
//! cargo bench -p agentfed --bench audit
//! AGENTFED_BENCH_EVENTS=400000 cargo bench -p agentfed --bench audit   # longer run
//! ```
//!
//! Every append counted here is durable when its ticket resolves: the
//! record was committed in a redb write transaction with
//! `Durability::Immediate` (fsync). Scenarios:
//!
//! * `sync x1`: one thread, `append` (submit and wait) one at a time: the
//!   latency floor of one durable commit, and why group commit matters.
//! * `group T x W`: T threads, each keeping W appends in flight with
//!   `submit`, waiting for the oldest when W are outstanding.

use std::collections::VecDeque;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use agentfed::audit::{AuditConfig, AuditEvent, AuditLog, EventType};
use agentfed::store::Store;
use serde_json::json;

fn event(thread: usize, i: usize) -> AuditEvent {
    AuditEvent::new(
        EventType::SpendReported,
        format!("spend reported for task t{thread}-{i}"),
    )
    .with_peer(format!("peer-{}", i % 16))
    .with_details(json!({
        "task_id": format!("t{thread}-{i}"),
        "tokens": 1200,
        "usd": 0.0042,
        "success": true,
    }))
}

struct Outcome {
    label: String,
    events: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Outcome {
    fn print(&mut self) {
        self.latencies_us.sort_unstable();
        let pct = |p: f64| {
            let n = self.latencies_us.len();
            let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
            self.latencies_us[i] as f64 / 1000.0
        };
        println!(
            "{:<16} {:>9} events in {:>7.3} s = {:>9.0} events/s   commit wait: median {:>7.3} ms, p99 {:>7.3} ms, max {:>7.3} ms",
            self.label,
            self.events,
            self.elapsed.as_secs_f64(),
            self.events as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            pct(1.0),
        );
    }
}

fn sync_appends(log: &AuditLog, events: usize) -> Outcome {
    let mut latencies_us = Vec::with_capacity(events);
    let started = Instant::now();
    for i in 0..events {
        let t = Instant::now();
        log.append(event(0, i)).expect("append");
        latencies_us.push(t.elapsed().as_micros() as u64);
    }
    Outcome {
        label: "sync x1".into(),
        events,
        elapsed: started.elapsed(),
        latencies_us,
    }
}

fn group_appends(log: &Arc<AuditLog>, threads: usize, window: usize, events: usize) -> Outcome {
    let per_thread = events / threads;
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let log = Arc::clone(log);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut latencies_us = Vec::with_capacity(per_thread);
                let mut in_flight = VecDeque::with_capacity(window);
                barrier.wait();
                for i in 0..per_thread {
                    if in_flight.len() == window {
                        let (t, ticket): (Instant, agentfed::audit::AppendTicket) =
                            in_flight.pop_front().expect("window is full");
                        ticket.wait().expect("commit");
                        latencies_us.push(t.elapsed().as_micros() as u64);
                    }
                    in_flight.push_back((
                        Instant::now(),
                        log.submit(event(thread, i)).expect("submit"),
                    ));
                }
                for (t, ticket) in in_flight {
                    ticket.wait().expect("commit");
                    latencies_us.push(t.elapsed().as_micros() as u64);
                }
                latencies_us
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut latencies_us = Vec::with_capacity(events);
    for handle in handles {
        latencies_us.extend(handle.join().expect("bench thread"));
    }
    Outcome {
        label: format!("group {threads} x {window}"),
        events: per_thread * threads,
        elapsed: started.elapsed(),
        latencies_us,
    }
}

fn main() {
    let events: usize = std::env::var("AGENTFED_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_in_home(dir.path()).expect("store");
    let log = Arc::new(AuditLog::open(&store, AuditConfig::default()).expect("audit log"));
    println!(
        "durable audit appends (redb, Durability::Immediate), temp dir {}",
        dir.path().display()
    );
    sync_appends(&log, 500).print();
    for (threads, window) in [(1, 64), (8, 64), (8, 256)] {
        group_appends(&log, threads, window, events).print();
    }
    let verify_started = Instant::now();
    let n = log.verify().expect("chain verifies");
    println!(
        "verify: {n} records in {:.3} s ({:.0} records/s)",
        verify_started.elapsed().as_secs_f64(),
        n as f64 / verify_started.elapsed().as_secs_f64()
    );
}
