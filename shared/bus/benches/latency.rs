//! Bus request/reply latency against a real nats-server on loopback: the issue asks
//! for p50 under 200 µs. Run: `cargo bench -p berth-bus --bench latency`.

use berth_bus::{Bus, Server};
use bus_schema::Service;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize)]
struct BenchEcho {
    n: u64,
}
bus_schema::rpc!(Storage, BenchEcho => u64);

fn main() {
    let nats = berth_test_support::Nats::start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // The server runs in its own process-like runtime on another thread, as a service would.
    let url = nats.url();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let b = Bus::connect(&url, None, "bench", "storage").await.unwrap();
            Server::new(b, Service::Storage).rpc(|r: BenchEcho| async move { Ok(r.n) }).run().await.unwrap();
        });
    });
    rt.block_on(async {
        let b = Bus::connect(&nats.url(), None, "bench", "gateway").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 0..1000 {
            b.request(&BenchEcho { n: i }).await.unwrap();
        }
        let n = 20_000;
        let mut lat = Vec::with_capacity(n);
        let t0 = Instant::now();
        for i in 0..n as u64 {
            let t = Instant::now();
            let r = b.request(&BenchEcho { n: i }).await.unwrap();
            lat.push(t.elapsed());
            assert_eq!(r, i);
        }
        let total = t0.elapsed();
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
        println!(
            "bus request/reply over loopback: n={n} p50={:?} p90={:?} p99={:?} max={:?} ({:.0} req/s sequential)",
            p(0.5),
            p(0.9),
            p(0.99),
            lat[lat.len() - 1],
            n as f64 / total.as_secs_f64()
        );
        println!("target: p50 < 200µs -> {}", if p(0.5) < Duration::from_micros(200) { "MET" } else { "NOT MET" });
    });
}
