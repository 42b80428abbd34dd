//! `docker build` (the classic builder API the CLI uses without buildx) through the
//! real docker CLI: Docker's getting-started Dockerfile on a stand-in Python base
//! image served by a local registry, a multi-stage build with cache reuse and a
//! one-file-change rebuild, and Docker's errors for broken builds.

use berth_e2e::fixtures::{busybox_layout, busybox_rootfs, node_with_registry, umoci_image};
use berth_e2e::{require_root, Node};
use std::path::Path;
use std::process::{Output, Stdio};

fn build(node: &Node, ctx: &Path, args: &[&str]) -> Output {
    node.cmd().arg("build").args(args).arg(".").current_dir(ctx).stdin(Stdio::null()).output().unwrap()
}

fn build_ok(node: &Node, ctx: &Path, args: &[&str]) -> String {
    let o = build(node, ctx, args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "build failed: {out}\n{}\n{}", String::from_utf8_lossy(&o.stderr), node.logs());
    out
}

/// For each `Step N/M : ...` of a build's output: (instruction, used the cache).
fn steps(out: &str) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = Vec::new();
    for l in out.lines() {
        if let Some(rest) = l.strip_prefix("Step ") {
            let ins = rest.split_once(" : ").map(|(_, i)| i.to_string()).unwrap_or_default();
            v.push((ins, false));
        } else if l.contains("Using cache") {
            v.last_mut().expect("cache line before any step").1 = true;
        }
    }
    v
}

/// A stand-in for Docker's `python:2.7-slim`: busybox plus a `pip` that "installs"
/// the packages of a requirements file into site-packages, and a `python` that runs
/// the getting-started app (checks its imports, prints its greeting).
fn python_standin() -> std::path::PathBuf {
    const PIP: &str = r##"#!/bin/sh
# stand-in pip: pip install [--trusted-host H] -r requirements.txt
set -e
[ "$1" = install ] || { echo "usage: pip install -r FILE" >&2; exit 2; }
shift; req=""
while [ $# -gt 0 ]; do
  case "$1" in --trusted-host) shift 2;; -r) req=$2; shift 2;; *) shift;; esac
done
while read -r pkg; do
  [ -n "$pkg" ] || continue
  mkdir -p "/usr/local/lib/python2.7/site-packages/$pkg"
  echo "# $pkg" > "/usr/local/lib/python2.7/site-packages/$pkg/__init__.py"
  echo "Collecting $pkg"; echo "Successfully installed $pkg"
done < "$req"
"##;
    const PYTHON: &str = r##"#!/bin/sh
# stand-in python: imports must be installed; print("...{}...".format(os.getenv("VAR", "d")))
app=$1
for m in $(sed -n 's/^import \([a-z_]*\).*/\1/p' "$app"); do
  case "$m" in os|sys|socket) continue;; esac
  [ -d "/usr/local/lib/python2.7/site-packages/$m" ] || { echo "ImportError: No module named $m" >&2; exit 1; }
done
sed -n 's/^print("\(.*\)"\.format(os\.getenv("\([A-Za-z_]*\)", *"\([^"]*\)")))$/\1|\2|\3/p' "$app" |
while IFS='|' read -r tmpl var def; do
  eval "val=\${$var:-$def}"
  echo "$tmpl" | sed "s/{}/$val/"
done
"##;
    umoci_image(
        "python-standin",
        |rootfs| {
            busybox_rootfs(rootfs);
            std::fs::create_dir_all(rootfs.join("usr/local/bin")).unwrap();
            std::fs::create_dir_all(rootfs.join("usr/local/lib/python2.7/site-packages")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            for (n, body) in [("pip", PIP), ("python", PYTHON)] {
                let p = rootfs.join("usr/local/bin").join(n);
                std::fs::write(&p, body).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        },
        &[
            "--config.cmd",
            "python",
            "--config.env",
            "PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--config.env",
            "PYTHON_VERSION=2.7.18",
        ],
    )
}

#[test]
fn getting_started_builds_and_greets() {
    require_root!();
    let (node, reg) = node_with_registry();
    reg.push_oci(&python_standin(), "latest", "python:2.7-slim");
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    std::fs::write(c.join("requirements.txt"), "Flask\nRedis\n").unwrap();
    std::fs::write(
        c.join("app.py"),
        "import os\nimport socket\nimport Flask\nimport Redis\n\nprint(\"Hello {}!\".format(os.getenv(\"NAME\", \"world\")))\n",
    )
    .unwrap();
    // Docker's getting-started (part 2) Dockerfile, with the base from the local registry
    std::fs::write(
        c.join("Dockerfile"),
        format!(
            "# Use an official Python runtime as a parent image\nFROM {}/python:2.7-slim\n\n\
             # Set the working directory to /app\nWORKDIR /app\n\n\
             # Copy the current directory contents into the container at /app\nCOPY . /app\n\n\
             # Install any needed packages specified in requirements.txt\n\
             RUN pip install --trusted-host pypi.python.org -r requirements.txt\n\n\
             # Make port 80 available to the world outside this container\nEXPOSE 80\n\n\
             # Define environment variable\nENV NAME World\n\n\
             # Run app.py when the container launches\nCMD [\"python\", \"app.py\"]\n",
            reg.addr()
        ),
    )
    .unwrap();
    let tag = format!("friendlyhello-{}", berth_e2e::uniq());
    let out = build_ok(&node, c, &["-t", &tag]);
    assert!(out.contains("Step 1/7 : FROM"), "{out}");
    assert!(out.contains("Successfully installed Flask"), "RUN output is streamed: {out}");
    assert!(out.contains(&format!("Successfully tagged {tag}:latest")), "{out}");

    let greet = node.docker_ok(&["run", "--rm", &tag]);
    assert_eq!(greet.trim(), "Hello World!");
    let greet = node.docker_ok(&["run", "--rm", "-e", "NAME=berth", &tag]);
    assert_eq!(greet.trim(), "Hello berth!");
    let cfg = node.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.ExposedPorts}} {{.Config.WorkingDir}} {{json .Config.Cmd}} {{index .Config.Env 0}}",
        &tag,
    ]);
    assert_eq!(cfg.trim(), r#"{"80/tcp":{}} /app ["python","app.py"] PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"#);
    // Docker's history: one entry per instruction on top of the base's
    let hist = node.docker_ok(&["history", "--no-trunc", "--format", "{{.CreatedBy}}", &tag]);
    let hist: Vec<&str> = hist.lines().collect();
    assert!(hist[0].contains("CMD [\"python\" \"app.py\"]"), "{hist:?}");
    assert!(hist.iter().any(|h| h.contains("RUN") && h.contains("pip install") || h.starts_with("/bin/sh -c pip install")), "{hist:?}");
    assert!(hist.iter().any(|h| h.contains("WORKDIR /app")), "{hist:?}");
    // the installed packages are in the image
    let ls = node.docker_ok(&["run", "--rm", &tag, "ls", "/usr/local/lib/python2.7/site-packages"]);
    assert_eq!(ls.split_whitespace().collect::<Vec<_>>(), ["Flask", "Redis"]);
}

#[test]
fn multi_stage_build_reuses_cache_and_rebuilds_from_a_changed_file() {
    require_root!();
    let (node, reg) = node_with_registry();
    reg.push_oci(&busybox_layout(), "latest", "busybox:latest");
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    std::fs::write(c.join("main.txt"), "main v1\n").unwrap();
    std::fs::write(c.join("lib.txt"), "lib v1\n").unwrap();
    std::fs::write(c.join("notes.txt"), "not copied\n").unwrap();
    std::fs::write(c.join(".dockerignore"), "notes.txt\n").unwrap();
    std::fs::write(
        c.join("Dockerfile"),
        format!(
            "ARG BASE={r}/busybox:latest\n\
             FROM $BASE AS builder\n\
             WORKDIR /src\n\
             COPY main.txt lib.txt ./\n\
             RUN cat main.txt lib.txt > artifact && echo built-by-stage-one >> artifact && ls > listing\n\
             FROM {r}/busybox:latest\n\
             LABEL stage=final\n\
             COPY --from=builder /src/artifact /usr/local/share/artifact\n\
             COPY --from=builder /src/listing /usr/local/share/listing\n\
             CMD [\"cat\", \"/usr/local/share/artifact\"]\n",
            r = reg.addr()
        ),
    )
    .unwrap();
    let tag = format!("multi-{}", berth_e2e::uniq());
    let iid = c.join("../iid");
    let out = build_ok(&node, c, &["-t", &tag, "--iidfile", iid.to_str().unwrap()]);
    let first = steps(&out);
    assert_eq!(first.len(), 10, "{out}");
    assert!(first.iter().all(|(_, cached)| !cached), "a cold build uses no cache: {out}");
    let id1 = std::fs::read_to_string(&iid).unwrap();
    assert!(id1.starts_with("sha256:"), "{id1}");
    assert_eq!(node.docker_ok(&["run", "--rm", &tag]), "main v1\nlib v1\nbuilt-by-stage-one\n");
    // .dockerignore kept notes.txt out of the context
    assert_eq!(node.docker_ok(&["run", "--rm", &tag, "cat", "/usr/local/share/listing"]), "artifact\nlib.txt\nlisting\nmain.txt\n");
    // the builder stage is not tagged; the final image does not carry it
    let ls = node.docker_ok(&["run", "--rm", &tag, "ls", "/"]);
    assert!(!ls.lines().any(|l| l == "src"), "{ls}");

    // nothing changed: every step after FROM comes from the cache, same image
    let out = build_ok(&node, c, &["-t", &tag, "--iidfile", iid.to_str().unwrap()]);
    for (ins, cached) in steps(&out) {
        assert!(cached || ins.starts_with("FROM") || ins.starts_with("ARG"), "{ins} rebuilt: {out}");
    }
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), id1, "an unchanged rebuild gives the same image");
    // a file outside the copied set (ignored) changes nothing either
    std::fs::write(c.join("notes.txt"), "changed, but ignored\n").unwrap();
    let out = build_ok(&node, c, &["-t", &tag, "-q"]);
    assert_eq!(out.trim(), id1.trim(), "-q prints only the (unchanged) image id");

    // one copied file changes: the cache holds up to the COPY, everything from it on is rebuilt
    std::fs::write(c.join("lib.txt"), "lib v2\n").unwrap();
    let out = build_ok(&node, c, &["-t", &tag, "--iidfile", iid.to_str().unwrap()]);
    let s = steps(&out);
    let copy = s.iter().position(|(i, _)| i.starts_with("COPY main.txt")).unwrap();
    for (n, (ins, cached)) in s.iter().enumerate() {
        if ins.starts_with("FROM") || ins.starts_with("ARG") {
            continue;
        }
        let expect_cached = n < copy || ins.starts_with("LABEL");
        assert_eq!(*cached, expect_cached, "step {n} {ins}: {out}");
    }
    assert_ne!(std::fs::read_to_string(&iid).unwrap(), id1);
    assert_eq!(node.docker_ok(&["run", "--rm", &tag]), "main v1\nlib v2\nbuilt-by-stage-one\n");

    // --target stops at the named stage; --no-cache uses no cache at all
    let out = build_ok(&node, c, &["--target", "builder", "-t", &format!("{tag}-builder")]);
    assert!(steps(&out).iter().all(|(i, _)| !i.contains("stage=final")), "{out}");
    assert_eq!(node.docker_ok(&["run", "--rm", &format!("{tag}-builder"), "cat", "/src/artifact"]), "main v1\nlib v2\nbuilt-by-stage-one\n");
    let out = build_ok(&node, c, &["--no-cache", "-t", &tag]);
    assert!(steps(&out).iter().all(|(_, cached)| !cached), "{out}");
}

#[test]
fn broken_builds_fail_with_dockers_errors_and_tag_nothing() {
    require_root!();
    let (node, reg) = node_with_registry();
    reg.push_oci(&busybox_layout(), "latest", "busybox:latest");
    let base = format!("{}/busybox:latest", reg.addr());
    // (name, Dockerfile, Moby's words, the CLI's exit code: a failing RUN's own code)
    let cases: Vec<(&str, String, &str, i32)> = vec![
        ("unknown", format!("FROM {base}\nFROBNICATE now\n"), "dockerfile parse error line 2: unknown instruction: FROBNICATE", 1),
        ("syntax", format!("FROM {base}\nENV\n"), "dockerfile parse error line 2: ENV requires at least one argument", 1),
        ("failing-run", format!("FROM {base}\nRUN echo before && exit 3\nRUN echo never\n"), "The command '/bin/sh -c echo before && exit 3' returned a non-zero code: 3", 3),
        ("outside", format!("FROM {base}\nCOPY ../../etc/passwd /x\n"), "COPY failed: forbidden path outside the build context: ../../etc/passwd", 1),
        ("missing", format!("FROM {base}\nCOPY nosuchfile /x\n"), "COPY failed: file not found in build context or excluded by .dockerignore: stat nosuchfile: file does not exist", 1),
    ];
    for (name, df, want, code) in cases {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("Dockerfile"), df).unwrap();
        let tag = format!("broken-{name}-{}", berth_e2e::uniq());
        let o = build(&node, ctx.path(), &["-t", &tag]);
        let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.status.code(), Some(code), "{name}: {all}");
        assert!(all.contains(want), "{name}: wanted {want:?} in {all}");
        let img = node.docker(&["image", "inspect", &tag]);
        assert!(!img.status.success(), "{name}: a failed build tagged {tag}");
    }
    // as in Moby, the failed RUN's container stays for inspection (the others are
    // removed); --force-rm removes it too
    let left = node.docker_ok(&["ps", "-a", "--format", "{{.Status}} {{.Command}}"]);
    assert!(left.trim().starts_with("Exited (3)") && left.lines().count() == 1, "{left}");
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), format!("FROM {base}\nRUN exit 4\n")).unwrap();
    let o = build(&node, ctx.path(), &["--force-rm"]);
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(node.docker_ok(&["ps", "-aq"]).lines().count(), 1, "--force-rm left the failed container");
}

/// The rest of the Dockerfile reference through the CLI: the escape directive and
/// line continuations, global and stage ARGs with `--build-arg`, `${VAR:-default}`,
/// SHELL, USER, ADD of a local tar (extracted) and of a URL, COPY `--chown/--chmod`
/// and globs, VOLUME, HEALTHCHECK, STOPSIGNAL, ONBUILD in a child build, `-f`,
/// `--label`, several `-t`.
#[test]
fn every_instruction_lands_in_the_image() {
    require_root!();
    let (node, reg) = node_with_registry();
    reg.push_oci(&busybox_layout(), "latest", "busybox:latest");
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    std::fs::create_dir_all(c.join("conf/sub")).unwrap();
    std::fs::write(c.join("conf/a.conf"), "a\n").unwrap();
    std::fs::write(c.join("conf/b.conf"), "b\n").unwrap();
    std::fs::write(c.join("conf/sub/c.txt"), "c\n").unwrap();
    // a local tar for ADD (extracted), made with tar(1)
    let tdir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tdir.path().join("pkg")).unwrap();
    std::fs::write(tdir.path().join("pkg/data.txt"), "from the tarball\n").unwrap();
    berth_e2e::fixtures::run(std::process::Command::new("tar").arg("-C").arg(tdir.path()).args(["-czf"]).arg(c.join("pkg.tar.gz")).arg("pkg"));
    // a URL for ADD: the registry fixture's host serves nothing useful, so a one-shot HTTP server
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/remote.txt", l.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in l.incoming().flatten().take(4) {
            let mut s = s;
            let mut b = [0u8; 2048];
            let _ = s.read(&mut b);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nfrom a URL!\n");
        }
    });
    std::fs::write(
        c.join("build.Dockerfile"),
        format!(
            "# escape=`\n\
             ARG REG={r}\n\
             FROM ${{REG}}/busybox:latest\n\
             ARG GREETING\n\
             ARG WHO=nobody\n\
             ENV GREETING=${{GREETING:-hi}} `\n    PLACE=\"the dock\"\n\
             LABEL org.example.who=$WHO maintainer=\"berth team\"\n\
             SHELL [\"/bin/sh\", \"-c\"]\n\
             RUN mkdir -p /data && echo \"$GREETING from $PLACE\" > /data/greeting\n\
             ADD pkg.tar.gz /opt/\n\
             ADD {url} /opt/remote.txt\n\
             COPY --chown=nobody:nogroup --chmod=640 conf/*.conf /etc/app/\n\
             COPY conf /etc/conf-tree\n\
             WORKDIR /work\n\
             USER nobody\n\
             VOLUME /data\n\
             HEALTHCHECK --interval=5s --timeout=2s --retries=2 CMD true\n\
             STOPSIGNAL SIGUSR1\n\
             ONBUILD RUN echo child-built > /tmp/onbuild\n\
             EXPOSE 8080/udp 9090\n\
             ENTRYPOINT [\"/bin/sh\", \"-c\"]\n\
             CMD [\"cat /data/greeting\"]\n",
            r = reg.addr()
        ),
    )
    .unwrap();
    let tag = format!("every-{}", berth_e2e::uniq());
    build_ok(
        &node,
        c,
        &["-f", "build.Dockerfile", "--build-arg", "GREETING=ahoy", "--build-arg", "WHO=berth", "--label", "built.by=e2e", "-t", &tag, "-t", &format!("{tag}:v2")],
    );
    assert_eq!(node.docker_ok(&["run", "--rm", &tag]), "ahoy from the dock\n");
    let show = |cmd: &str| node.docker_ok(&["run", "--rm", "--entrypoint", "sh", &tag, "-c", cmd]);
    // a downloaded file is root's, mode 0600 (as Docker makes it): read it as root
    let remote = node.docker_ok(&["run", "--rm", "-u", "root", "--entrypoint", "sh", &tag, "-c", "cat /opt/pkg/data.txt /opt/remote.txt; stat -c %a /opt/remote.txt"]);
    assert_eq!(remote, "from the tarball\nfrom a URL!\n600\n");
    assert_eq!(show("stat -c '%U:%G %a %n' /etc/app/*"), "nobody:nogroup 640 /etc/app/a.conf\nnobody:nogroup 640 /etc/app/b.conf\n");
    assert_eq!(show("cat /etc/conf-tree/sub/c.txt; id -un; pwd"), "c\nnobody\n/work\n");
    let f = node.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Config.User}}|{{json .Config.Volumes}}|{{.Config.StopSignal}}|{{json .Config.Healthcheck.Test}}|{{.Config.Healthcheck.Retries}}|{{json .Config.OnBuild}}|{{index .Config.Labels \"org.example.who\"}}|{{index .Config.Labels \"built.by\"}}|{{index .Config.Labels \"maintainer\"}}|{{json .Config.ExposedPorts}}|{{json .Config.Shell}}",
        &format!("{tag}:v2"),
    ]);
    assert_eq!(
        f.trim(),
        r#"nobody|{"/data":{}}|SIGUSR1|["CMD-SHELL","true"]|2|["RUN echo child-built > /tmp/onbuild"]|berth|e2e|berth team|{"8080/udp":{},"9090/tcp":{}}|["/bin/sh","-c"]"#
    );
    // ONBUILD runs in a build FROM this image
    let child = tempfile::tempdir().unwrap();
    std::fs::write(child.path().join("Dockerfile"), format!("FROM {tag}\nUSER root\n")).unwrap();
    let out = build_ok(&node, child.path(), &["-t", &format!("{tag}-child")]);
    assert!(out.contains("Executing 1 build trigger"), "{out}");
    assert_eq!(node.docker_ok(&["run", "--rm", &format!("{tag}-child"), "cat /tmp/onbuild"]), "child-built\n");
}

/// `docker commit` with a message, an author, `-c` changes and `-p` (pause while committing).
#[test]
fn commit_makes_an_image_of_a_container() {
    require_root!();
    let (node, reg) = node_with_registry();
    reg.push_oci(&busybox_layout(), "latest", "busybox:latest");
    let img = format!("{}/busybox:latest", reg.addr());
    node.docker_ok(&["run", "-d", "--name", "src", &img, "sh", "-c", "echo committed > /state && sleep 60"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let tag = format!("committed-{}", berth_e2e::uniq());
    let id = node.docker_ok(&[
        "commit", "-p", "-m", "first state", "-a", "Jane <jane@example.com>",
        "-c", "ENV MODE=prod", "-c", "CMD [\"cat\", \"/state\"]", "-c", "EXPOSE 7000", "src", &tag,
    ]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    assert_eq!(node.docker_ok(&["inspect", "-f", "{{.State.Status}}", "src"]).trim(), "running", "-p unpauses after the commit");
    assert_eq!(node.docker_ok(&["run", "--rm", &tag]), "committed\n");
    let f = node.docker_ok(&["image", "inspect", "-f", "{{.Author}}|{{.Comment}}|{{json .Config.ExposedPorts}}|{{range .Config.Env}}{{.}};{{end}}", &tag]);
    assert!(f.starts_with(r#"Jane <jane@example.com>|first state|{"7000/tcp":{}}|"#), "{f}");
    assert!(f.contains("MODE=prod;"), "{f}");
    let h = node.docker_ok(&["history", "--format", "{{.Comment}}", &tag]);
    assert_eq!(h.lines().next(), Some("first state"));
    // a bad change is Docker's error and makes nothing
    let o = node.docker(&["commit", "-c", "FROBNICATE x", "src", &format!("{tag}-bad")]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("FROBNICATE"), "{}", String::from_utf8_lossy(&o.stderr));
    node.docker_ok(&["rm", "-f", "src"]);
}
