//! Transport benchmarks: a bench binary that prints its numbers.
//!
//!     cargo bench -p agentfed --bench transport
//!
//! Measures:
//! * deflate / inflate cost and ratio of random-ish JSON at several sizes
//!   and levels (raw deflate with a sync flush, as permessage-deflate does;
//!   same miniz_oxide backend as the WebSocket layer), to choose the
//!   compression threshold;
//! * request/reply round trip (1 KiB, interactive) between two nodes over
//!   real TLS on loopback, idle and while a 16 MiB bulk transfer is in
//!   flight on the same connection in the same direction;
//! * bulk throughput (16 MiB messages) and one-way 1 KiB message rate.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agentfed::clock::{Clock, SystemClock};
use agentfed::identity::{Identity, ManifestParams, NodeId};
use agentfed::transport::{
    AcceptAll, Accepted, Connection, Listener, LocalNode, Pin, Priority, TransportConfig, connect,
};

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    deflate_costs(quick);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let buffer = TransportConfig::default().socket_buffer;
    runtime.block_on(wire(quick, true, buffer));
    runtime.block_on(wire(quick, false, buffer));
    runtime.block_on(wire(quick, false, None));
}

/// Pseudo-random JSON like an envelope payload: ids, numbers, words.
fn json_like(len: usize, seed: &mut u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "agent", "task", "result", "memory", "context", "alpha", "beta", "query", "status",
        "coder", "review", "summary", "tokens", "budget", "peer", "value",
    ];
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let mut out = String::from("[");
    while out.len() < len {
        let id = next();
        let n = next() % 100_000;
        let w1 = WORDS[(next() % 16) as usize];
        let w2 = WORDS[(next() % 16) as usize];
        out.push_str(&format!(
            "{{\"id\":\"{id:016x}{:016x}\",\"{w1}\":{n},\"text\":\"{w2} {w1} {}\"}},",
            next(),
            next() % 977
        ));
    }
    out.truncate(len.saturating_sub(1));
    out.push(']');
    out.into_bytes()
}

fn deflate_costs(quick: bool) {
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
    println!(
        "## deflate / inflate, random-ish JSON (raw deflate, sync flush, no context takeover)"
    );
    println!("| size | level | deflate µs | inflate µs | wire/original |");
    println!("|---|---|---|---|---|");
    let mut seed = 0x1234_5678_9abc_def1u64;
    for size in [1024usize, 8 * 1024, 64 * 1024] {
        let input = json_like(size, &mut seed);
        let rounds = if quick {
            20
        } else {
            (4_000_000 / size).max(100)
        };
        for level in [1u32, 3, 6] {
            // State reused and reset per message, as the WebSocket layer
            // does without context takeover.
            let mut c = Compress::new(Compression::new(level), false);
            let mut out = Vec::with_capacity(size + 1024);
            let started = Instant::now();
            for _ in 0..rounds {
                out.clear();
                c.reset();
                c.compress_vec(&input, &mut out, FlushCompress::Sync)
                    .expect("deflate");
            }
            let deflate_us = started.elapsed().as_secs_f64() * 1e6 / rounds as f64;
            let mut d = Decompress::new(false);
            let mut back = Vec::with_capacity(size + 16);
            let started = Instant::now();
            for _ in 0..rounds {
                back.clear();
                d.reset(false);
                d.decompress_vec(&out, &mut back, FlushDecompress::Sync)
                    .expect("inflate");
            }
            let inflate_us = started.elapsed().as_secs_f64() * 1e6 / rounds as f64;
            assert_eq!(back, input);
            println!(
                "| {} KiB | {level} | {deflate_us:.1} | {inflate_us:.1} | {:.2} |",
                size / 1024,
                out.len() as f64 / size as f64
            );
        }
    }
    println!();
}

fn node(name: &str) -> LocalNode {
    let id = Identity::generate(&NodeId::parse(name).expect("id"), "wss://127.0.0.1:9100")
        .expect("identity");
    let manifest = id
        .signed_manifest(
            &ManifestParams::new(Ipv4Addr::new(198, 18, 0, 9)),
            SystemClock.now_ms(),
        )
        .expect("manifest");
    LocalNode::new(Arc::new(id), manifest).expect("node")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn pingpong(c: &Connection, n: usize) -> Vec<Duration> {
    let payload = vec![b'p'; 1024];
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.request(
            Priority::Interactive,
            payload.clone(),
            Duration::from_secs(30),
        )
        .await
        .expect("ping");
        rtts.push(t.elapsed());
    }
    rtts.sort();
    rtts
}

async fn wire(quick: bool, compression: bool, socket_buffer: Option<u32>) {
    let config = TransportConfig {
        compression,
        socket_buffer,
        ..TransportConfig::default()
    };
    let server = node("server");
    let client = node("client");
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut listener = Listener::bind(addr, server.clone(), config.clone(), Arc::new(AcceptAll))
        .await
        .expect("bind");
    let url = format!("wss://{}", listener.local_addr());
    let pin = Pin::Fingerprint(server.identity().tls_fingerprint().to_string());
    let (c, accepted) = tokio::join!(
        connect(&url, pin, &client, &config, &AcceptAll),
        listener.next()
    );
    let c = c.expect("connect");
    let Some(Accepted::Established(s)) = accepted else {
        panic!("server side failed");
    };
    let (sh, mut incoming) = s.into_parts();
    // Server: answer requests, count bulk bytes.
    let server_task = tokio::spawn(async move {
        let mut bulk_bytes = 0usize;
        while let Some(mut m) = incoming.recv().await {
            if let Some(r) = m.take_responder() {
                let _ = r.reply(m.data).await;
            } else {
                bulk_bytes += m.data.len();
            }
        }
        bulk_bytes
    });

    println!(
        "## wire, TLS 1.3 loopback, permessage-deflate {}, socket buffers {}",
        if compression {
            format!(
                "on (threshold {} KiB, level {})",
                config.compression_threshold / 1024,
                config.compression_level
            )
        } else {
            "off".to_string()
        },
        match socket_buffer {
            Some(n) => format!("{} KiB", n / 1024),
            None => "kernel autotuned".to_string(),
        }
    );
    let n = if quick { 50 } else { 2000 };
    pingpong(&c, n / 10).await; // warm up
    let idle = pingpong(&c, n).await;
    println!(
        "ping (1 KiB request/reply) idle: n={n} p50 {:?} p99 {:?}",
        percentile(&idle, 0.5),
        percentile(&idle, 0.99)
    );

    // Bulk in flight: a task sends 16 MiB messages back to back.
    const BULK: usize = 16 << 20;
    let mut seed = 0xfeed_beef_u64;
    let bulk = bytes::Bytes::from(json_like(BULK, &mut seed));
    let stop = Arc::new(AtomicBool::new(false));
    let (h, flag, data) = (c.handle(), stop.clone(), bulk.clone());
    let bulk_task = tokio::spawn(async move {
        let started = Instant::now();
        let mut sent = 0usize;
        while !flag.load(Ordering::SeqCst) {
            h.send_message(Priority::Bulk, data.clone())
                .await
                .expect("bulk");
            sent += 1;
        }
        (sent, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let busy = pingpong(&c, n / 4).await;
    stop.store(true, Ordering::SeqCst);
    let (sent, took) = bulk_task.await.expect("bulk task");
    println!(
        "ping while 16 MiB messages stream: n={} p50 {:?} p99 {:?} max {:?}",
        busy.len(),
        percentile(&busy, 0.5),
        percentile(&busy, 0.99),
        busy.last().copied().unwrap_or_default()
    );
    println!(
        "bulk: {sent} x 16 MiB queued in {took:?} = {:.0} MiB/s (random-ish JSON)",
        (sent * 16) as f64 / took.as_secs_f64()
    );

    // One-way 1 KiB messages.
    let m = if quick { 1000 } else { 100_000 };
    let small = bytes::Bytes::from(vec![b'x'; 1024]);
    let started = Instant::now();
    for _ in 0..m {
        c.send_message(Priority::Interactive, small.clone())
            .await
            .expect("send");
    }
    // A round trip drains what is queued before it (same class, FIFO).
    pingpong(&c, 1).await;
    let took = started.elapsed();
    println!(
        "one-way 1 KiB messages: {m} in {took:?} = {:.0} msg/s",
        m as f64 / took.as_secs_f64()
    );
    println!();

    c.close("NORMAL");
    c.closed().await;
    sh.closed().await;
    let _ = server_task.await;
    listener.shutdown().await;
}
