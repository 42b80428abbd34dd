//! Storage benchmarks (run as root: `cargo bench -p berth-storage`). Prints:
//! * layer apply throughput for a generated multi-layer gzip image (the unpack part of
//!   a cold pull), sequential and parallel, on overlay2;
//! * p50/p99 of RwLayerCreate + RwLayerMount on overlay2 over 500 iterations;
//! * the time to remove 200 stopped containers' layers.
//!
//! With `MOBY_HOST=unix:///path/to/moby.sock` it also loads the same layers into that
//! dockerd (`docker load` of a generated archive: its unpack path) and prints the ratio.
//! `BENCH_LAYER_MB` sets the uncompressed size of each of the 4 layers (default 64).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_storage::{volumes::NoEvents, Storage, StorageApi};
use bus_schema::storage::*;
use sha2::{Digest, Sha256};

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A deterministic pseudo-random generator (xorshift) for file sizes and contents.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One layer: many files of mixed sizes (most small, some large), compressible text-like data.
fn make_layer(seed: u64, target: usize) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let mut b = tar::Builder::new(Vec::with_capacity(target + (1 << 20)));
    let words: Vec<&[u8]> = vec![
        b"lorem ",
        b"ipsum ",
        b"dolor ",
        b"sit ",
        b"amet ",
        b"berth ",
        b"layer ",
        b"\n",
        b"0123456789 ",
    ];
    let mut total = 0usize;
    let mut i = 0;
    while total < target {
        let r = rng.next();
        let size = match r % 100 {
            0..=59 => (r >> 8) as usize % 4096,
            60..=94 => (r >> 8) as usize % (64 << 10),
            _ => (r >> 8) as usize % (2 << 20),
        };
        let mut data = Vec::with_capacity(size);
        while data.len() < size {
            let w = words[(rng.next() % words.len() as u64) as usize];
            data.extend_from_slice(w);
            if rng.next() % 16 == 0 {
                data.extend_from_slice(&rng.next().to_le_bytes());
            }
        }
        data.truncate(size);
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, format!("layer{seed}/d{}/f{i}", i % 97), &data[..])
            .unwrap();
        total += data.len() + 512;
        i += 1;
    }
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

struct Layer {
    tar_len: usize,
    gz: Arc<Vec<u8>>,
    diff_id: String,
    tar: Vec<u8>,
}

async fn apply_one(s: &Storage, parent: Option<String>, l: &Layer) -> LayerApplied {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let gz = l.gz.clone();
    let feeder = tokio::spawn(async move {
        for c in gz.chunks(128 << 10) {
            if tx.send(Ok(c.to_vec())).await.is_err() {
                break;
            }
        }
    });
    let r = s
        .apply_layer(
            LayerApply {
                parent,
                media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
                compressed_digest: Some(digest(&l.gz)),
                diff_id: Some(l.diff_id.clone()),
            },
            rx,
        )
        .await
        .unwrap();
    feeder.await.unwrap();
    r
}

fn open(dir: &std::path::Path) -> Storage {
    Storage::open(dir, "overlay2", &[], Arc::new(NoEvents)).unwrap()
}

fn drop_caches() {
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
}

/// CPU time (user + system) of the whole process so far.
fn cpu_time() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("storage benchmarks need root (mounts)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mb: usize = std::env::var("BENCH_LAYER_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let nlayers = 4;
    eprintln!("generating {nlayers} layers of ~{mb} MiB...");
    let layers: Vec<Layer> = (0..nlayers)
        .map(|i| {
            let tar = make_layer(i as u64 + 1, mb << 20);
            let gz = gzip(&tar);
            Layer {
                tar_len: tar.len(),
                diff_id: digest(&tar),
                gz: Arc::new(gz),
                tar,
            }
        })
        .collect();
    let total_tar: usize = layers.iter().map(|l| l.tar_len).sum();
    let total_gz: usize = layers.iter().map(|l| l.gz.len()).sum();
    println!(
        "image: {nlayers} layers, {:.1} MiB uncompressed, {:.1} MiB gzip",
        total_tar as f64 / 1048576.0,
        total_gz as f64 / 1048576.0
    );

    let base = tempfile::tempdir_in("/var/tmp").unwrap();
    let skip_apply = std::env::var_os("BENCH_SKIP_APPLY").is_some();
    if !skip_apply {
        // Sequential apply.
        let seq = {
            let dir = base.path().join("seq");
            let s = open(&dir);
            drop_caches();
            let t = Instant::now();
            rt.block_on(async {
                let mut parent = None;
                for l in &layers {
                    parent = Some(apply_one(&s, parent, l).await.chain_id);
                }
            });
            let el = t.elapsed();
            drop(s);
            let _ = std::fs::remove_dir_all(&dir);
            el
        };
        // Parallel apply (all layers at once, as a pull with concurrent downloads does).
        let par = {
            let dir = base.path().join("par");
            let s = Arc::new(open(&dir));
            drop_caches();
            let t = Instant::now();
            rt.block_on(async {
                let mut parent: Option<String> = None;
                let mut tasks = Vec::new();
                for l in &layers {
                    let s = s.clone();
                    let p = parent.clone();
                    let chain = berth_storage::layers::chain_id(parent.as_deref(), &l.diff_id);
                    let gz = l.gz.clone();
                    let lay = Layer {
                        tar_len: l.tar_len,
                        gz,
                        diff_id: l.diff_id.clone(),
                        tar: vec![],
                    };
                    tasks.push(tokio::spawn(async move { apply_one(&s, p, &lay).await }));
                    parent = Some(chain);
                }
                for t in tasks {
                    t.await.unwrap();
                }
            });
            let el = t.elapsed();
            drop(s);
            let _ = std::fs::remove_dir_all(&dir);
            el
        };
        let mbps = |d: Duration| total_tar as f64 / 1048576.0 / d.as_secs_f64();
        println!(
            "layer apply, sequential: {:.2} s, {:.0} MiB/s (uncompressed)",
            seq.as_secs_f64(),
            mbps(seq)
        );
        println!(
            "layer apply, parallel:   {:.2} s, {:.0} MiB/s (uncompressed)",
            par.as_secs_f64(),
            mbps(par)
        );

        if let Ok(host) = std::env::var("MOBY_HOST") {
            match moby_load(&host, &layers, base.path()) {
                Ok(d) => {
                    println!(
                        "moby docker load (same layers): {:.2} s, {:.0} MiB/s",
                        d.as_secs_f64(),
                        mbps(d)
                    );
                    println!(
                        "ratio berth parallel / moby: {:.2}x",
                        d.as_secs_f64() / par.as_secs_f64()
                    );
                }
                Err(e) => println!("moby comparison failed: {e}"),
            }
        }
    }

    // Container layers: create + mount, 500 times, on a small image.
    let dir = base.path().join("rw");
    let s = open(&dir);
    let small = {
        let tar = make_layer(99, 256 << 10);
        let gz = gzip(&tar);
        Layer {
            tar_len: tar.len(),
            diff_id: digest(&tar),
            gz: Arc::new(gz),
            tar,
        }
    };
    let img = rt.block_on(apply_one(&s, None, &small)).chain_id;
    let mut times = Vec::with_capacity(500);
    let mut cpu = Vec::with_capacity(500);
    rt.block_on(async {
        for i in 0..500 {
            let id = format!("bench{i:04}");
            let t = Instant::now();
            let c = cpu_time();
            s.rw_layer_create(RwLayerCreate {
                id: id.clone(),
                parent: Some(img.clone()),
            })
            .await
            .unwrap();
            s.rw_layer_mount(RwLayerMount { id: id.clone() }).await.unwrap();
            times.push(t.elapsed());
            cpu.push(cpu_time() - c);
            s.rw_layer_unmount(RwLayerUnmount { id: id.clone() })
                .await
                .unwrap();
            s.rw_layer_remove(RwLayerRemove { id }).await.unwrap();
        }
    });
    println!(
        "RwLayerCreate+Mount (overlay2, 500 iterations): p50 {:.3} ms, p99 {:.3} ms",
        pct(&mut times, 0.5).as_secs_f64() * 1e3,
        pct(&mut times, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "  CPU time of the same (user+sys, all threads): p50 {:.3} ms, p99 {:.3} ms; load average {}",
        pct(&mut cpu, 0.5).as_secs_f64() * 1e3,
        pct(&mut cpu, 0.99).as_secs_f64() * 1e3,
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').next().unwrap_or("?")
    );

    // 200 stopped containers (created, mounted, written, unmounted), then removed.
    rt.block_on(async {
        for i in 0..200 {
            let id = format!("stopped{i:03}");
            s.rw_layer_create(RwLayerCreate {
                id: id.clone(),
                parent: Some(img.clone()),
            })
            .await
            .unwrap();
            let m = s.rw_layer_mount(RwLayerMount { id: id.clone() }).await.unwrap();
            std::fs::write(std::path::Path::new(&m.path).join("written"), b"state").unwrap();
            s.rw_layer_unmount(RwLayerUnmount { id }).await.unwrap();
        }
    });
    let t = Instant::now();
    let c = cpu_time();
    rt.block_on(async {
        for i in 0..200 {
            s.rw_layer_remove(RwLayerRemove {
                id: format!("stopped{i:03}"),
            })
            .await
            .unwrap();
        }
    });
    let el = t.elapsed();
    println!(
        "remove 200 stopped containers' layers: {:.1} ms ({:.2} ms each)",
        el.as_secs_f64() * 1e3,
        el.as_secs_f64() * 1e3 / 200.0
    );
    let _ = small.tar;
}

/// `docker load` of a docker-archive holding the same layers (uncompressed tar
/// members are what `docker save` writes; we give gzip layers, which load accepts
/// too, so Moby decompresses as a pull does).
fn moby_load(host: &str, layers: &[Layer], tmp: &std::path::Path) -> Result<Duration, String> {
    let path = tmp.join("moby-image.tar");
    let f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    let mut b = tar::Builder::new(f);
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [],
    });
    let config = serde_json::to_vec(&config).unwrap();
    let cfg_name = format!("{}.json", &digest(&config)[7..]);
    let mut names = Vec::new();
    let add = |b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    add(&mut b, &cfg_name, &config);
    for (i, l) in layers.iter().enumerate() {
        let n = format!("l{i}/layer.tar");
        add(&mut b, &n, &l.gz);
        names.push(n);
    }
    let manifest = serde_json::json!([{"Config": cfg_name, "RepoTags": ["berth-bench:latest"], "Layers": names}]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    b.into_inner().map_err(|e| e.to_string())?;
    let docker = |args: &[&str]| {
        std::process::Command::new("docker")
            .arg("-H")
            .arg(host)
            .args(args)
            .output()
    };
    let _ = docker(&["rmi", "-f", "berth-bench:latest"]);
    drop_caches();
    let t = Instant::now();
    let o = docker(&["load", "-q", "-i", path.to_str().unwrap()]).map_err(|e| e.to_string())?;
    let el = t.elapsed();
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    let _ = docker(&["rmi", "-f", "berth-bench:latest"]);
    Ok(el)
}
