//! One `docker info` is one trace with spans from the gateway and from the services
//! behind the bus, collected by an in-process OTLP/HTTP receiver.

use berth_e2e::{Node, NodeOpts};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// (trace id hex, service.name, span name) for every span received.
type Spans = Arc<Mutex<Vec<(String, String, String)>>>;

fn start_receiver(rt: &tokio::runtime::Runtime) -> (u16, Spans) {
    let spans: Spans = Arc::new(Mutex::new(Vec::new()));
    let l = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = l.local_addr().unwrap().port();
    let s2 = spans.clone();
    rt.spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else { break };
            let spans = s2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let spans = spans.clone();
                    async move {
                        use http_body_util::BodyExt;
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        if let Ok(r) = ExportTraceServiceRequest::decode(body) {
                            let mut g = spans.lock().unwrap();
                            for rs in r.resource_spans {
                                let name = rs
                                    .resource
                                    .as_ref()
                                    .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                                    .and_then(|a| a.value.as_ref())
                                    .map(|v| format!("{:?}", v.value))
                                    .unwrap_or_default();
                                for ss in rs.scope_spans {
                                    for sp in ss.spans {
                                        let tid: String = sp.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                                        g.push((tid, name.clone(), sp.name.clone()));
                                    }
                                }
                            }
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (port, spans)
}

#[test]
fn docker_info_is_one_trace_across_services() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (port, spans) = start_receiver(&rt);
    let node = Node::start_opts(NodeOpts {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("http://127.0.0.1:{port}")),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ],
        ..Default::default()
    });
    node.docker_ok(&["info"]);
    let t = Instant::now();
    loop {
        let g = spans.lock().unwrap().clone();
        // the trace of GET /info: the gateway's request span and its bus children
        let info_traces: Vec<String> = g
            .iter()
            .filter(|(_, svc, name)| svc.contains("berth-gateway") && name.contains("/info"))
            .map(|(t, _, _)| t.clone())
            .collect();
        for tid in &info_traces {
            let services: std::collections::BTreeSet<String> =
                g.iter().filter(|(t, _, _)| t == tid).map(|(_, s, _)| s.clone()).collect();
            if services.len() >= 3 {
                eprintln!("trace {tid}: {services:?}");
                return;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no trace spanning services; got {g:#?}\n{}", node.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `docker run --rm busybox true` is one trace: the gateway's request spans and
/// the spans of at least four services behind the bus (images, storage, network,
/// runtime).
#[test]
fn docker_run_is_one_trace_across_four_services() {
    berth_e2e::require_root!();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (port, spans) = start_receiver(&rt);
    let opts = NodeOpts {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("http://127.0.0.1:{port}")),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ],
        ..Default::default()
    };
    let (node, _reg, img) = berth_e2e::fixtures::node_with_busybox_opts(opts);
    node.docker_ok(&["run", "--rm", &img, "true"]);
    let t = Instant::now();
    loop {
        let g = spans.lock().unwrap().clone();
        // POST /containers/create and POST /containers/{id}/start are the CLI's
        // requests; the start's trace reaches the runtime, storage and network
        let mut best = std::collections::BTreeSet::new();
        for (tid, _, _) in g.iter().filter(|(_, svc, name)| svc.contains("berth-gateway") && name.contains("/start")) {
            let services: std::collections::BTreeSet<String> =
                g.iter().filter(|(t, _, _)| t == tid).map(|(_, s, _)| s.clone()).collect();
            if services.len() > best.len() {
                best = services;
            }
        }
        if best.len() >= 4 {
            eprintln!("docker run: start trace spans {best:?}");
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no trace spanning four services (best {best:?}); got {g:#?}\n{}", node.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}
