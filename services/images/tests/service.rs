//! The images service on a real nats-server, against Debian's docker-registry with
//! images made by umoci and skopeo, and a fake storage service on the bus.

mod common;

use berth_bus::images::ImagesApi as _;
use berth_bus::storage::{StorageApi as _, StorageClient};
use bus_schema::images::*;
use bus_schema::stream::ByteChunk;
use bus_schema::ErrorKind;
use common::*;
use futures_util::StreamExt as _;
use std::collections::HashMap;
use std::process::Command;

fn cfg() -> berth_config::DaemonConfig {
    berth_config::DaemonConfig::default()
}

async fn pull(
    e: &Env,
    reference: &str,
    platform: Option<&str>,
    auth: Option<RegistryAuth>,
) -> Result<(Vec<JsonMessage>, Option<bus_schema::BusError>), bus_schema::BusError> {
    let req = ImagePull {
        reference: reference.into(),
        platform: platform.map(str::to_string),
        auth,
    };
    let ((), rd) = e.client.image_pull(req).await?;
    Ok(messages(rd).await)
}

async fn pull_ok(e: &Env, reference: &str) -> Vec<JsonMessage> {
    let (m, err) = pull(e, reference, None, None).await.unwrap();
    assert!(err.is_none(), "{err:?}\n{:?}", statuses(&m));
    m
}

async fn list(e: &Env, filters: &[(&str, &str)]) -> Vec<bus_schema::docker::ImageSummary> {
    let mut f: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in filters {
        f.entry(k.to_string()).or_default().push(v.to_string());
    }
    e.client
        .image_list(ImageList {
            all: false,
            digests: true,
            filters: f,
        })
        .await
        .unwrap()
}

async fn inspect(
    e: &Env,
    name: &str,
) -> Result<bus_schema::docker::ImageInspect, bus_schema::BusError> {
    e.client
        .image_inspect(ImageInspect { name: name.into() })
        .await
        .map(|d| d.inspect)
}

async fn rmi(
    e: &Env,
    name: &str,
    force: bool,
) -> Result<Vec<bus_schema::docker::ImageDeleteResponseItem>, bus_schema::BusError> {
    e.client
        .image_remove(ImageRemove {
            name: name.into(),
            force,
            noprune: false,
        })
        .await
}

fn ingest_empty(e: &Env) -> bool {
    std::fs::read_dir(e.root.path().join("images/ingest"))
        .unwrap()
        .count()
        == 0
}

fn blob_count(e: &Env) -> usize {
    std::fs::read_dir(e.root.path().join("images/blobs/sha256"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_then_up_to_date_then_by_digest() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let layout = umoci_image(work.path(), 3, "amd64", "a");
    reg.push_oci(&layout, "t", "r/app:1", &[]);
    let (digest, _) = remote_digest(
        &reg,
        "r/app",
        "1",
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await;
    let e = env(cfg()).await;
    let name = format!("{}/r/app:1", reg.addr());

    let m = pull_ok(&e, &name).await;
    let s = statuses(&m);
    assert_eq!(s[0], "1: Pulling from r/app");
    assert_eq!(
        s.iter()
            .filter(|x| x.ends_with(": Pulling fs layer"))
            .count(),
        3,
        "{s:?}"
    );
    assert_eq!(
        s.iter().filter(|x| x.ends_with(": Pull complete")).count(),
        3,
        "{s:?}"
    );
    assert!(
        s.iter().any(|x| x.ends_with(": Verifying Checksum")),
        "{s:?}"
    );
    assert!(m.iter().any(|x| x.status.as_deref() == Some("Downloading")
        && x.progress_detail.unwrap().total.is_some()));
    assert_eq!(s[s.len() - 2], format!("Digest: {digest}"));
    assert_eq!(
        s[s.len() - 1],
        format!("Status: Downloaded newer image for {name}")
    );

    let l = list(&e, &[]).await;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].repo_tags, vec![name.clone()]);
    assert_eq!(
        l[0].repo_digests,
        vec![format!("{}/r/app@{digest}", reg.addr())]
    );
    assert_eq!(l[0].labels["salt"], "a");
    assert!(l[0].size > 0);
    // storage holds the layers, the image one reference on its top
    assert_eq!(e.storage.count(), 3);
    let img = inspect(&e, &name).await.unwrap();
    let top = e.images.resolve(&name).unwrap().chain_id.unwrap();
    assert_eq!(e.storage.refs(&top), Some(1));
    assert_eq!(img.root_fs.unwrap().layers.unwrap().len(), 3);
    assert_eq!(img.config.unwrap().cmd.unwrap(), vec!["sh"]);
    assert_eq!(img.architecture.as_deref(), Some("amd64"));
    // by short ID and full ID
    let id = img.id.unwrap();
    assert_eq!(inspect(&e, &id[7..19]).await.unwrap().id.unwrap(), id);
    assert_eq!(inspect(&e, &id).await.unwrap().id.unwrap(), id);
    // blobs kept: 3 layers + manifest
    assert_eq!(blob_count(&e), 4);
    assert!(ingest_empty(&e));

    // again: nothing to fetch
    let applies = *e.storage.applies.lock().unwrap();
    let s = statuses(&pull_ok(&e, &name).await);
    assert_eq!(
        s,
        vec![
            "1: Pulling from r/app".to_string(),
            format!("Digest: {digest}"),
            format!("Status: Image is up to date for {name}")
        ]
    );
    assert_eq!(*e.storage.applies.lock().unwrap(), applies);

    // by digest
    let by_digest = format!("{}/r/app@{digest}", reg.addr());
    let s = statuses(&pull_ok(&e, &by_digest).await);
    assert_eq!(
        s.last().unwrap(),
        &format!("Status: Image is up to date for {by_digest}")
    );
    assert_eq!(inspect(&e, &by_digest).await.unwrap().id.unwrap(), id);
    // name:tag@digest (a swarm service's pinned image): the digest wins, as Moby's
    let tag_and_digest = format!("{}/r/app:v1@{digest}", reg.addr());
    assert_eq!(inspect(&e, &tag_and_digest).await.unwrap().id.unwrap(), id);

    // remove and pull by digest again: layers come back, same image
    let r = rmi(&e, &name, false).await.unwrap();
    assert!(
        r.iter().any(|x| x.deleted.as_deref() == Some(id.as_str())),
        "{r:?}"
    );
    assert_eq!(e.storage.count(), 0);
    assert_eq!(blob_count(&e), 0);
    let s = statuses(&pull_ok(&e, &by_digest).await);
    assert_eq!(s[0], format!("{by_digest}: Pulling from r/app"));
    assert_eq!(
        s.last().unwrap(),
        &format!("Status: Downloaded newer image for {by_digest}")
    );
    assert_eq!(inspect(&e, &by_digest).await.unwrap().id.unwrap(), id);
    let l = list(&e, &[]).await;
    assert!(l[0].repo_tags.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_read_like_docker() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let layout = umoci_image(work.path(), 1, "amd64", "e");
    reg.push_oci(&layout, "t", "r/app:1", &[]);
    let e = env(cfg()).await;
    let a = reg.addr();

    let err = pull(&e, &format!("{a}/r/app:nope"), None, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert_eq!(
        err.message,
        format!("manifest for {a}/r/app:nope not found: manifest unknown: manifest unknown")
    );

    let err = pull(&e, &format!("{a}/r/none"), None, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(
        err.message.contains("not found") || err.message.contains("pull access denied"),
        "{}",
        err.message
    );

    let port = berth_test_support::free_port();
    let err = pull(&e, &format!("127.0.0.1:{port}/x"), None, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Internal);
    assert_eq!(err.message, format!("Get \"http://127.0.0.1:{port}/v2/\": dial tcp 127.0.0.1:{port}: connect: connection refused"));

    let err = pull(&e, "BusyBox", None, None).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    assert_eq!(
        err.message,
        "invalid reference format: repository name (library/BusyBox) must be lowercase"
    );

    let err = inspect(&e, "nope").await.unwrap_err();
    assert_eq!(
        (err.kind, err.message.as_str()),
        (ErrorKind::NotFound, "No such image: nope:latest")
    );
    let err = rmi(&e, "nope", false).await.unwrap_err();
    assert_eq!(err.message, "No such image: nope:latest");
    let err = e
        .client
        .image_tag(ImageTag {
            source: "nope".into(),
            repo: "x".into(),
            tag: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.message, "No such image: nope:latest");
    assert!(e.storage.count() == 0 && blob_count(&e) == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_blob_fails_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let layout = umoci_image(work.path(), 3, "amd64", "t");
    reg.push_oci(&layout, "t", "r/bad:1", &[]);
    let (_, mbody) = remote_digest(
        &reg,
        "r/bad",
        "1",
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await;
    let m: serde_json::Value = serde_json::from_slice(&mbody).unwrap();
    let victim = m["layers"][1]["digest"].as_str().unwrap().to_string();
    let f = reg.blob_file(&victim);
    let mut bytes = std::fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&f, &bytes).unwrap();

    let e = env(cfg()).await;
    let (msgs, err) = pull(&e, &format!("{}/r/bad:1", reg.addr()), None, None)
        .await
        .unwrap();
    let err = err.expect("the pull must fail");
    assert_eq!(
        err.message,
        format!("filesystem layer verification failed for digest {victim}"),
        "{:?}",
        statuses(&msgs)
    );
    assert_eq!(e.storage.count(), 0, "layers left behind");
    assert_eq!(blob_count(&e), 0, "blobs left behind");
    assert!(ingest_empty(&e), "ingest left behind");
    assert!(list(&e, &[]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_for_docker_hub_and_offline_hello_world() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let layout = umoci_image(work.path(), 2, "amd64", "m");
    reg.push_oci(&layout, "t", "library/busybox:latest", &[]);
    let e = env(berth_config::DaemonConfig {
        registry_mirrors: vec![format!("http://{}", reg.addr())],
        ..cfg()
    })
    .await;
    let s = statuses(&pull_ok(&e, "busybox").await);
    assert_eq!(s[0], "latest: Pulling from library/busybox");
    assert_eq!(
        s.last().unwrap(),
        "Status: Downloaded newer image for busybox:latest"
    );
    assert_eq!(
        list(&e, &[("reference", "busybox")]).await[0].repo_tags,
        vec!["busybox:latest"]
    );

    // hello-world: not on the mirror, Docker Hub unreachable: the embedded image
    let s = statuses(&pull_ok(&e, "hello-world").await);
    assert_eq!(s[0], "latest: Pulling from library/hello-world", "{s:?}");
    assert_eq!(
        s.last().unwrap(),
        "Status: Downloaded newer image for hello-world:latest"
    );
    let r = e.images.resolve("hello-world").unwrap();
    assert_eq!(r.config.cmd.unwrap(), vec!["/hello"]);
    assert_eq!(r.name, "docker.io/library/hello-world:latest");
    // an unknown image is not replaced by it
    let err = pull(&e, "hello-world:nope", None, None).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Internal, "{}", err.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_and_schema2_layers() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let layout = umoci_image(work.path(), 2, "amd64", "z");
    reg.push_oci(
        &layout,
        "t",
        "r/zstd:1",
        &["--dest-compress-format", "zstd", "--dest-compress"],
    );
    reg.push_oci(&layout, "t", "r/s2:1", &["--format", "v2s2"]);
    let (_, m) = remote_digest(
        &reg,
        "r/zstd",
        "1",
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await;
    assert!(
        String::from_utf8_lossy(&m).contains("zstd"),
        "skopeo did not make zstd layers: {}",
        String::from_utf8_lossy(&m)
    );
    let e = env(cfg()).await;
    pull_ok(&e, &format!("{}/r/zstd:1", reg.addr())).await;
    // the same config in another manifest format: the same image, only a new name
    let s = statuses(&pull_ok(&e, &format!("{}/r/s2:1", reg.addr())).await);
    assert_eq!(s.len(), 3, "{s:?}");
    assert!(s[2].starts_with("Status: Downloaded newer image for"));
    let a = inspect(&e, &format!("{}/r/zstd:1", reg.addr()))
        .await
        .unwrap();
    let b = inspect(&e, &format!("{}/r/s2:1", reg.addr()))
        .await
        .unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(
        a.repo_digests.unwrap().len() + b.repo_digests.unwrap().len(),
        4
    );
    // gone from storage, the layers come back from the gzip blobs of schema2
    rmi(&e, &format!("{}/r/zstd:1", reg.addr()), false)
        .await
        .unwrap();
    rmi(&e, &format!("{}/r/s2:1", reg.addr()), false)
        .await
        .unwrap();
    assert_eq!(e.storage.count(), 0);
    let s = statuses(&pull_ok(&e, &format!("{}/r/s2:1", reg.addr())).await);
    assert_eq!(
        s.iter().filter(|x| x.ends_with("Pull complete")).count(),
        2,
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_selection_from_an_index() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let amd = umoci_image(work.path(), 1, "amd64", "p");
    let arm = umoci_image(work.path(), 1, "arm64", "p");
    reg.push_oci(&amd, "t", "r/multi:amd64", &[]);
    reg.push_oci(&arm, "t", "r/multi:arm64", &[]);
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let (da, ba) = remote_digest(&reg, "r/multi", "amd64", oci).await;
    let (db, bb) = remote_digest(&reg, "r/multi", "arm64", oci).await;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": oci, "digest": db, "size": bb.len(), "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": oci, "digest": da, "size": ba.len(), "platform": {"architecture": "amd64", "os": "linux"}}
        ]
    });
    let body = serde_json::to_vec(&index).unwrap();
    let r = reqwest::Client::new()
        .put(format!("http://{}/v2/r/multi/manifests/latest", reg.addr()))
        .header("Content-Type", "application/vnd.oci.image.index.v1+json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let e = env(cfg()).await;
    let name = format!("{}/r/multi", reg.addr());
    let m = pull_ok(&e, &name).await;
    assert_eq!(
        statuses(&m).iter().rev().nth(1).unwrap(),
        &format!("Digest: {}", sha(&body))
    );
    assert_eq!(
        inspect(&e, &name).await.unwrap().architecture.as_deref(),
        Some("amd64")
    );
    let (_, err) = pull(&e, &name, Some("linux/arm64"), None).await.unwrap();
    assert!(err.is_none());
    assert_eq!(
        inspect(&e, &name).await.unwrap().architecture.as_deref(),
        Some("arm64")
    );
    let err = pull(&e, &name, Some("linux/s390x"), None)
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "no matching manifest for linux/s390x in the manifest list entries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_login_and_pull() {
    let work = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("secret", 5).unwrap();
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap();
    let reg = Registry::start_with(&format!(
        "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
        htpasswd.display()
    ));
    let layout = umoci_image(work.path(), 1, "amd64", "b");
    reg.push_oci(
        &layout,
        "t",
        "r/private:1",
        &["--dest-creds", "alice:secret"],
    );
    let e = env(cfg()).await;
    let a = reg.addr();
    let good = RegistryAuth {
        username: Some("alice".into()),
        password: Some("secret".into()),
        server_address: Some(a.clone()),
        ..Default::default()
    };
    let bad = RegistryAuth {
        password: Some("wrong".into()),
        ..good.clone()
    };

    let ok = e
        .client
        .registry_login(RegistryLogin { auth: good.clone() })
        .await
        .unwrap();
    assert_eq!(ok.status, "Login Succeeded");
    let err = e
        .client
        .registry_login(RegistryLogin { auth: bad })
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unauthorized, "{}", err.message);

    let err = pull(&e, &format!("{a}/r/private:1"), None, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(err.message.starts_with(&format!("pull access denied for {a}/r/private, repository does not exist or may require 'docker login'")), "{}", err.message);
    let (_, err) = pull(&e, &format!("{a}/r/private:1"), None, Some(good))
        .await
        .unwrap();
    assert!(err.is_none(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_challenge_flow() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let layout = umoci_image(work.path(), 2, "amd64", "c");
    reg.push_oci(&layout, "t", "r/tok:1", &[]);
    let proxy = token_proxy(reg.addr(), "bob", "pw").await;
    let e = env(cfg()).await;
    let name = format!("{}/r/tok:1", proxy.addr());
    let err = pull(&e, &name, None, None).await.unwrap_err();
    assert!(
        err.message.contains("pull access denied"),
        "{}",
        err.message
    );
    let auth = RegistryAuth {
        username: Some("bob".into()),
        password: Some("pw".into()),
        ..Default::default()
    };
    let (m, err) = pull(&e, &name, None, Some(auth.clone())).await.unwrap();
    assert!(err.is_none(), "{err:?} {:?}", statuses(&m));
    assert!(
        proxy
            .token_requests
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    );
    let ok = e
        .client
        .registry_login(RegistryLogin {
            auth: RegistryAuth {
                server_address: Some(proxy.addr()),
                ..auth
            },
        })
        .await
        .unwrap();
    assert_eq!(ok.status, "Login Succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_mounts_and_pulls_back_by_digest() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let layout = umoci_image(work.path(), 2, "amd64", "u");
    reg.push_oci(&layout, "t", "r/src:1", &[]);
    let e = env(cfg()).await;
    let a = reg.addr();
    pull_ok(&e, &format!("{a}/r/src:1")).await;
    e.client
        .image_tag(ImageTag {
            source: format!("{a}/r/src:1"),
            repo: format!("{a}/r/dst"),
            tag: Some("2".into()),
        })
        .await
        .unwrap();
    let ((), rd) = e
        .client
        .image_push(ImagePush {
            name: format!("{a}/r/dst"),
            tag: Some("2".into()),
            auth: None,
        })
        .await
        .unwrap();
    let (m, err) = messages(rd).await;
    assert!(err.is_none(), "{err:?}");
    let s = statuses(&m);
    assert_eq!(s[0], format!("The push refers to repository [{a}/r/dst]"));
    assert_eq!(
        s.iter()
            .filter(|x| x.ends_with("Mounted from r/src"))
            .count(),
        2,
        "{s:?}"
    );
    let aux = m.iter().find_map(|x| x.aux.clone()).unwrap();
    let digest = aux["Digest"].as_str().unwrap().to_string();
    assert_eq!(aux["Tag"], "2");
    assert!(
        s.iter()
            .any(|x| x.starts_with(&format!("2: digest: {digest} size: "))),
        "{s:?}"
    );
    let id = inspect(&e, &format!("{a}/r/dst:2"))
        .await
        .unwrap()
        .id
        .unwrap();
    // pushing again: everything is there
    let ((), rd) = e
        .client
        .image_push(ImagePush {
            name: format!("{a}/r/dst"),
            tag: Some("2".into()),
            auth: None,
        })
        .await
        .unwrap();
    let s = statuses(&messages(rd).await.0);
    assert_eq!(
        s.iter()
            .filter(|x| x.ends_with("Layer already exists"))
            .count(),
        2,
        "{s:?}"
    );

    // an image made here (import): exported, compressed, pushed; pulled back by digest
    let tar = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(6);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "hello.txt", &b"hello\n"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let imp = ImageImport {
        source: "-".into(),
        repo: Some(format!("{a}/r/made")),
        tag: Some("1".into()),
        changes: vec![],
        message: None,
        platform: None,
    };
    let ((), rd) = e
        .client
        .image_import(imp, input(vec![ByteChunk(tar.clone())]))
        .await
        .unwrap();
    let (m, err) = messages(rd).await;
    assert!(err.is_none(), "{err:?}");
    let made_id = m.last().unwrap().status.clone().unwrap();
    let ((), rd) = e
        .client
        .image_push(ImagePush {
            name: format!("{a}/r/made"),
            tag: Some("1".into()),
            auth: None,
        })
        .await
        .unwrap();
    let (m, err) = messages(rd).await;
    assert!(err.is_none(), "{err:?}");
    assert!(
        statuses(&m).iter().any(|x| x.ends_with(": Pushed")),
        "{:?}",
        statuses(&m)
    );
    let made_digest = m.iter().find_map(|x| x.aux.clone()).unwrap()["Digest"]
        .as_str()
        .unwrap()
        .to_string();
    for n in [
        format!("{a}/r/made:1"),
        format!("{a}/r/dst:2"),
        format!("{a}/r/src:1"),
    ] {
        rmi(&e, &n, true).await.unwrap();
    }
    assert!(list(&e, &[]).await.is_empty(), "{:?}", list(&e, &[]).await);
    assert_eq!(e.storage.count(), 0);
    pull_ok(&e, &format!("{a}/r/dst@{digest}")).await;
    assert_eq!(
        inspect(&e, &format!("{a}/r/dst@{digest}"))
            .await
            .unwrap()
            .id
            .unwrap(),
        id
    );
    pull_ok(&e, &format!("{a}/r/made@{made_digest}")).await;
    assert_eq!(
        inspect(&e, &format!("{a}/r/made@{made_digest}"))
            .await
            .unwrap()
            .id
            .unwrap(),
        made_id
    );
}

async fn save(e: &Env, names: &[&str]) -> Vec<u8> {
    let ((), mut rd) = e
        .client
        .image_save(ImageSave {
            names: names.iter().map(|s| s.to_string()).collect(),
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(c) = rd.next().await {
        out.extend(c.unwrap().0);
    }
    out
}

async fn load(e: &Env, data: &[u8]) -> (Vec<JsonMessage>, Option<bus_schema::BusError>) {
    let chunks = data
        .chunks(bus_schema::stream::MAX_CHUNK)
        .map(|c| ByteChunk(c.to_vec()))
        .collect();
    let ((), rd) = e
        .client
        .image_load(ImageLoad { quiet: false }, input(chunks))
        .await
        .unwrap();
    messages(rd).await
}

fn loaded(m: &[JsonMessage]) -> Vec<String> {
    m.iter().filter_map(|x| x.stream.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_rmi_load_and_third_party_archives() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let layout = umoci_image(work.path(), 2, "amd64", "s");
    reg.push_oci(&layout, "t", "r/save:1", &[]);
    let e = env(cfg()).await;
    let name = format!("{}/r/save:1", reg.addr());
    pull_ok(&e, &name).await;
    let id = inspect(&e, &name).await.unwrap().id.unwrap();
    let err = e
        .client
        .image_save(ImageSave {
            names: vec!["nope".into()],
        })
        .await
        .err()
        .unwrap();
    assert_eq!(err.message, "No such image: nope:latest");

    let tarball = save(&e, &[&name]).await;
    let path = work.path().join("saved.tar");
    std::fs::write(&path, &tarball).unwrap();
    let listing = run(Command::new("tar").arg("tf").arg(&path));
    for f in ["manifest.json", "index.json", "oci-layout", "repositories"] {
        assert!(listing.lines().any(|l| l == f), "{f} missing:\n{listing}");
    }
    // skopeo reads it both as docker-archive and as an OCI layout
    let inspected = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("docker-archive:{}", path.display())));
    assert!(
        inspected.contains("\"Architecture\": \"amd64\""),
        "{inspected}"
    );
    let x = work.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    run(Command::new("tar").arg("xf").arg(&path).arg("-C").arg(&x));
    run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}", x.display())));

    rmi(&e, &name, true).await.unwrap();
    assert!(list(&e, &[]).await.is_empty());
    assert_eq!(e.storage.count(), 0);
    let (m, err) = load(&e, &tarball).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(loaded(&m), vec![format!("Loaded image: {name}\n")]);
    assert_eq!(inspect(&e, &name).await.unwrap().id.unwrap(), id);
    assert!(m
        .iter()
        .any(|x| x.status.as_deref() == Some("Loading layer")));

    // skopeo's docker-archive and oci-archive
    let da = work.path().join("skopeo-docker.tar");
    run(Command::new("skopeo")
        .arg("copy")
        .arg("--quiet")
        .arg(format!("oci:{}:t", layout.display()))
        .arg(format!("docker-archive:{}:sk/docker:1", da.display())));
    let (m, err) = load(&e, &std::fs::read(&da).unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(loaded(&m), vec!["Loaded image: sk/docker:1\n".to_string()]);
    let oa = work.path().join("skopeo-oci.tar");
    run(Command::new("skopeo")
        .arg("copy")
        .arg("--quiet")
        .arg(format!("oci:{}:t", layout.display()))
        .arg(format!("oci-archive:{}:sk/oci:2", oa.display())));
    let (m, err) = load(&e, &std::fs::read(&oa).unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(loaded(&m), vec!["Loaded image: sk/oci:2\n".to_string()]);
    assert_eq!(inspect(&e, "sk/oci:2").await.unwrap().id.unwrap(), id);

    // junk is refused with a message, and changes nothing
    let (_, err) = load(
        &e,
        b"this is not a tar archive at all, not even close..........",
    )
    .await;
    assert!(err.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_with_changes() {
    let e = env(cfg()).await;
    let tar = {
        let mut b = tar::Builder::new(Vec::new());
        for (p, d) in [
            ("bin/hi", &b"#!/bin/sh\necho hi\n"[..]),
            ("etc/motd", &b"welcome\n"[..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, p, d).unwrap();
        }
        b.into_inner().unwrap()
    };
    let gz = {
        use std::io::Write;
        let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        g.write_all(&tar).unwrap();
        g.finish().unwrap()
    };
    let imp = ImageImport {
        source: "-".into(),
        repo: Some("imported".into()),
        tag: Some("v1".into()),
        changes: vec![
            "CMD [\"/bin/hi\"]".into(),
            "ENV A=b".into(),
            "LABEL k=v".into(),
        ],
        message: Some("made by hand".into()),
        platform: None,
    };
    let ((), rd) = e
        .client
        .image_import(imp.clone(), input(vec![ByteChunk(gz)]))
        .await
        .unwrap();
    let (m, err) = messages(rd).await;
    assert!(err.is_none(), "{err:?}");
    let id = m.last().unwrap().status.clone().unwrap();
    assert!(id.starts_with("sha256:"));
    let i = inspect(&e, "imported:v1").await.unwrap();
    assert_eq!(i.id.as_deref(), Some(id.as_str()));
    assert_eq!(i.comment.as_deref(), Some("made by hand"));
    let c = i.config.unwrap();
    assert_eq!(c.cmd.unwrap(), vec!["/bin/hi"]);
    assert_eq!(c.env.unwrap(), vec!["A=b"]);
    let h: Vec<bus_schema::docker::ImageHistoryResponseItem> = e
        .client
        .image_history(ImageHistory {
            name: "imported:v1".into(),
        })
        .await
        .unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].id, id);
    assert_eq!(h[0].comment, "made by hand");
    assert_eq!(h[0].tags, vec!["imported:v1"]);
    assert_eq!(h[0].size, 26);

    let bad = ImageImport {
        changes: vec!["RUN rm -rf /".into()],
        ..imp
    };
    let ((), rd) = e.client.image_import(bad, input(vec![])).await.unwrap();
    let (_, err) = messages(rd).await;
    assert_eq!(err.unwrap().message, "RUN is not a valid change command");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_tag_rmi_prune_rules() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let one = umoci_image(work.path(), 1, "amd64", "one");
    let two = umoci_image(work.path(), 2, "amd64", "two");
    reg.push_oci(&one, "t", "r/one:1", &[]);
    reg.push_oci(&two, "t", "r/two:1", &[]);
    let e = env(cfg()).await;
    let a = reg.addr();
    let n1 = format!("{a}/r/one:1");
    let n2 = format!("{a}/r/two:1");
    pull_ok(&e, &n1).await;
    pull_ok(&e, &n2).await;
    let id1 = inspect(&e, &n1).await.unwrap().id.unwrap();
    let id2 = inspect(&e, &n2).await.unwrap().id.unwrap();

    // tag, then rmi by name only untags
    e.client
        .image_tag(ImageTag {
            source: n1.clone(),
            repo: "alias".into(),
            tag: None,
        })
        .await
        .unwrap();
    let err = e
        .client
        .image_tag(ImageTag {
            source: n1.clone(),
            repo: format!("x@sha256:{}", "a".repeat(64)),
            tag: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "refusing to create a tag with a digest reference"
    );
    assert_eq!(
        list(&e, &[("reference", "alias")]).await[0].repo_tags,
        vec!["alias:latest"]
    );
    assert_eq!(list(&e, &[("reference", "*/r/*")]).await.len(), 2);
    assert_eq!(list(&e, &[("label", "salt=two")]).await[0].id, id2);
    assert_eq!(list(&e, &[("dangling", "true")]).await.len(), 0);
    // by ID with two repositories: must be forced
    let err = rmi(&e, &id1, false).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict);
    assert_eq!(err.message, format!("conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories", &id1[7..19]));
    let r = rmi(&e, "alias", false).await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].untagged.as_deref(), Some("alias:latest"));

    // a container uses image two
    e.runtime
        .lock()
        .unwrap()
        .insert(id2.clone(), vec!["c0ffee00c0ffee00".into()]);
    let err = rmi(&e, &id2, false).await.unwrap_err();
    assert_eq!(err.message, format!("conflict: unable to delete {} (must be forced) - image is being used by stopped container c0ffee00c0ff", &id2[7..19]));
    let err = rmi(&e, &n2, false).await.unwrap_err();
    assert!(err.message.starts_with(&format!("conflict: unable to remove repository reference \"{n2}\" (must force) - container c0ffee00c0ff is using its referenced image")), "{}", err.message);
    let r = rmi(&e, &n2, true).await.unwrap();
    assert!(
        r.iter().any(|x| x.deleted.as_deref() == Some(id2.as_str())),
        "{r:?}"
    );
    e.runtime.lock().unwrap().clear();

    // untagged images are dangling and pruned
    e.client
        .image_remove(ImageRemove {
            name: n1.clone(),
            force: false,
            noprune: false,
        })
        .await
        .unwrap();
    assert!(list(&e, &[]).await.is_empty());
    pull_ok(
        &e,
        &format!(
            "{a}/r/one@{}",
            remote_digest(
                &reg,
                "r/one",
                "1",
                "application/vnd.oci.image.manifest.v1+json"
            )
            .await
            .0
        ),
    )
    .await;
    assert_eq!(list(&e, &[("dangling", "true")]).await.len(), 1);
    let p: bus_schema::docker::ImagePruneResponse =
        e.client.image_prune(ImagePrune::default()).await.unwrap();
    let deleted = p.images_deleted.unwrap();
    assert!(
        deleted
            .iter()
            .any(|x| x.deleted.as_deref() == Some(id1.as_str())),
        "{deleted:?}"
    );
    assert!(p.space_reclaimed.unwrap() > 0);
    assert!(list(&e, &[]).await.is_empty());
    assert_eq!(e.storage.count(), 0);
    assert_eq!(blob_count(&e), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_share_layers() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let layout = umoci_image(work.path(), 3, "amd64", "cc");
    reg.push_oci(&layout, "t", "r/cc:1", &[]);
    let e = env(cfg()).await;
    let name = format!("{}/r/cc:1", reg.addr());
    let (a, b) = tokio::join!(pull(&e, &name, None, None), pull(&e, &name, None, None));
    assert!(a.unwrap().1.is_none());
    assert!(b.unwrap().1.is_none());
    assert_eq!(e.storage.count(), 3);
    let top = e.images.resolve(&name).unwrap().chain_id.unwrap();
    assert_eq!(e.storage.refs(&top), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_from_layers_and_resolve() {
    let e = env(cfg()).await;
    // a layer applied by "the builder", then an image from it
    let tar = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "f", &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let req = bus_schema::storage::LayerApply {
        parent: None,
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        compressed_digest: None,
        diff_id: None,
    };
    let storage =
        StorageClient::new(e.client.bus().clone()).with_timeout(std::time::Duration::from_secs(60));
    let ((), mut rd) = storage
        .layer_apply(req, input(vec![ByteChunk(tar)]))
        .await
        .unwrap();
    let layer = rd.next().await.unwrap().unwrap();
    let base = ImageCreateFromLayer {
        parent: None,
        layer: Some(layer.clone()),
        config: bus_schema::docker::ImageConfig {
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        },
        history: HistoryEntry {
            created_by: "COPY f /".into(),
            ..Default::default()
        },
        author: None,
        comment: None,
        tags: vec!["base:1".into()],
        record_parent: false,
    };
    let base_id: String = e.client.image_create_from_layer(base).await.unwrap();
    let child = ImageCreateFromLayer {
        parent: Some("base:1".into()),
        layer: None,
        config: bus_schema::docker::ImageConfig {
            cmd: Some(vec!["echo".into(), "hi".into()]),
            ..Default::default()
        },
        history: HistoryEntry {
            created_by: "CMD [\"echo\",\"hi\"]".into(),
            empty_layer: true,
            ..Default::default()
        },
        author: Some("me".into()),
        comment: None,
        tags: vec!["child:1".into()],
        record_parent: true,
    };
    let child_id: String = e.client.image_create_from_layer(child).await.unwrap();
    let r: ResolvedImage = e
        .client
        .image_resolve(ImageResolve {
            reference: "child:1".into(),
        })
        .await
        .unwrap();
    assert_eq!(r.id, child_id);
    assert_eq!(r.name, "docker.io/library/child:1");
    assert_eq!(r.chain_id.as_deref(), Some(layer.chain_id.as_str()));
    assert_eq!(r.config.cmd.unwrap(), vec!["echo", "hi"]);
    assert_eq!(e.storage.refs(&layer.chain_id), Some(2));
    let h: Vec<bus_schema::docker::ImageHistoryResponseItem> = e
        .client
        .image_history(ImageHistory {
            name: "child:1".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        h.iter().map(|x| x.id.clone()).collect::<Vec<_>>(),
        vec![child_id.clone(), base_id.clone()]
    );
    // the parent has a child: it cannot go, even forced
    let err = rmi(&e, &base_id, true).await.unwrap_err();
    assert!(
        err.message.ends_with("image has dependent child images"),
        "{}",
        err.message
    );
    rmi(&e, "child:1", false).await.unwrap();
    // the parent was untagged? no: it keeps base:1
    assert_eq!(list(&e, &[]).await.len(), 1);
    let r: ResolvedImage = e
        .client
        .image_resolve(ImageResolve {
            reference: base_id[7..].to_string(),
        })
        .await
        .unwrap();
    assert_eq!(r.name, base_id);
    rmi(&e, "base:1", false).await.unwrap();
    assert_eq!(e.storage.count(), 0);
}
