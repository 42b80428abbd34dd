//! The shim's poll loop: container output to the log and attached clients, stdin
//! from clients, control requests, execs, and the end of the container.

use berth_shim::init::{exec_child, ns_proc_name, process};
use super::{await_exec, child_main, fork_in_pidns, log, sys, ParentStdio, PidNs};
use berth_shim::bpf::SockFilter;
use berth_shim::cgroups::Cgroup;
use berth_shim::jsonlog::{LogWriter, Time};
use berth_shim::oci::{Process, ShimConfig};
use berth_shim::proto::{self, Event, ExecRequest, ExitStatus, Request, StartErrorKind, StateInfo};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Past this much unsent output to a client, stop reading what feeds it.
const HIGH: usize = 256 << 10;
/// How long a finished shim keeps trying to hand its last bytes to slow clients.
const LINGER: Duration = Duration::from_secs(60);
/// How long after the init's exit a log plugin in blocking mode still holds the
/// output back (Moby's loggerCloseTimeout: then "logs may be truncated").
const LOGGER_CLOSE: Duration = Duration::from_secs(10);

pub struct Init {
    pub cfg: ShimConfig,
    pub bundle: PathBuf,
    pub sock_path: PathBuf,
    pub listener: UnixListener,
    pub sigfd: OwnedFd,
    pub spawn: Option<OwnedFd>,
    pub pid: i32,
    pub stdio: ParentStdio,
    pub log: Option<LogWriter>,
    pub cgroup: Option<Cgroup>,
    pub seccomp: Option<(Vec<SockFilter>, u32)>,
    pub host_bounding: u64,
    pub namespaces: Vec<libc::c_int>,
    pub new_pidns: bool,
}

struct Conn {
    fd: OwnedFd,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    attach: [bool; 2],
    wait: bool,
    exec: Option<usize>,
    exited_sent: bool,
}

struct Exec {
    id: String,
    pid: i32,
    conn: Option<usize>,
    out: [Option<OwnedFd>; 2],
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_close: bool,
    pty: bool,
    status: Option<i32>,
}

pub struct Server {
    id: String,
    bundle: PathBuf,
    sock_path: PathBuf,
    listener: UnixListener,
    sigfd: OwnedFd,
    pid: i32,
    tty: bool,
    out: [Option<OwnedFd>; 2],
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_close: bool,
    log: Option<LogWriter>,
    cgroup: Option<Cgroup>,
    seccomp: Option<(Vec<SockFilter>, u32)>,
    host_bounding: u64,
    namespaces: Vec<libc::c_int>,
    new_pidns: bool,
    init_status: Option<i32>,
    /// When the init exited.
    init_exited: Option<Instant>,
    exit: Option<ExitStatus>,
    finished_at: Option<Instant>,
    conns: Vec<Option<Conn>>,
    execs: Vec<Option<Exec>>,
    buf: Vec<u8>,
}

#[derive(Clone, Copy)]
enum Src {
    Sig,
    Listener,
    Conn(usize),
    Out(usize),
    Stdin,
    /// A log-driver plugin's FIFO takes bytes again.
    Plugin,
    ExecOut(usize, usize),
    ExecStdin(usize),
}

fn exit_status(raw: i32) -> (i32, Option<i32>) {
    if libc::WIFSIGNALED(raw) {
        let s = libc::WTERMSIG(raw);
        (128 + s, Some(s))
    } else {
        (libc::WEXITSTATUS(raw), None)
    }
}

impl Server {
    pub fn new(i: Init) -> Server {
        let tty = matches!(i.stdio, ParentStdio::Pty { .. });
        let (out, stdin) = match i.stdio {
            ParentStdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => ([Some(stdout), Some(stderr)], stdin),
            ParentStdio::Pty { master } => {
                let w = unsafe { libc::fcntl(master.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
                let stdin = if w >= 0 {
                    Some(unsafe { OwnedFd::from_raw_fd(w) })
                } else {
                    None
                };
                ([Some(master), None], stdin)
            }
        };
        for fd in out.iter().flatten().chain(stdin.iter()) {
            let _ = sys::set_nonblocking(fd.as_raw_fd(), true);
        }
        let _ = i.listener.set_nonblocking(true);
        let mut s = Server {
            id: i.cfg.id.clone(),
            bundle: i.bundle,
            sock_path: i.sock_path,
            listener: i.listener,
            sigfd: i.sigfd,
            pid: i.pid,
            tty,
            out,
            stdin,
            stdin_buf: Vec::new(),
            stdin_close: false,
            log: i.log,
            cgroup: i.cgroup,
            seccomp: i.seccomp,
            host_bounding: i.host_bounding,
            namespaces: i.namespaces,
            new_pidns: i.new_pidns,
            init_status: None,
            init_exited: None,
            exit: None,
            finished_at: None,
            conns: Vec::new(),
            execs: Vec::new(),
            buf: Vec::new(),
        };
        if let Some(fd) = i.spawn {
            let idx = s.add_conn(fd);
            let c = s.conns[idx].as_mut().unwrap();
            c.wait = true;
            c.attach = [i.cfg.attach_stdout, i.cfg.attach_stderr];
            Event::Started { pid: i.pid as u32 }.encode(&mut c.outbuf);
        }
        s
    }

    fn add_conn(&mut self, fd: OwnedFd) -> usize {
        let _ = sys::set_nonblocking(fd.as_raw_fd(), true);
        let c = Conn {
            fd,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            attach: [false; 2],
            wait: false,
            exec: None,
            exited_sent: false,
        };
        if let Some(i) = self.conns.iter().position(|c| c.is_none()) {
            self.conns[i] = Some(c);
            i
        } else {
            self.conns.push(Some(c));
            self.conns.len() - 1
        }
    }

    fn send(&mut self, conn: usize, ev: &Event) {
        if let Some(c) = self.conns.get_mut(conn).and_then(|c| c.as_mut()) {
            ev.encode(&mut c.outbuf);
        }
    }

    /// Whether container output may be read: no attached client is backed up, and
    /// a log plugin in blocking mode took what it was given (Moby's copier waits
    /// for the driver; after the init's exit, for [`LOGGER_CLOSE`] at most).
    fn output_flowing(&self, stream: usize) -> bool {
        let plugin_takes = !self.plugin_waits() || self.init_exited.is_some_and(|t| t.elapsed() >= LOGGER_CLOSE);
        plugin_takes
            && self
                .conns
                .iter()
                .flatten()
                .all(|c| !(c.attach[stream] && c.exec.is_none()) || c.outbuf.len() < HIGH)
    }

    /// The output waits for a blocking log plugin after the init's exit: wake up
    /// to stop waiting in time.
    fn held_for_plugin(&self) -> bool {
        self.init_exited.is_some() && self.out.iter().any(|o| o.is_some()) && self.plugin_waits()
    }

    /// A log plugin in blocking mode has not taken all it was given.
    fn plugin_waits(&self) -> bool {
        self.log.as_ref().and_then(|l| l.plugin()).is_some_and(|p| !p.accepts_more())
    }

    pub fn run(mut self) -> i32 {
        self.buf = vec![0u8; proto::CHUNK];
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut srcs: Vec<Src> = Vec::new();
        loop {
            if self.exit.is_none() && self.ready_to_finish() {
                self.finish();
            }
            if let Some(t) = self.finished_at {
                let pending = self.conns.iter().flatten().any(|c| !c.outbuf.is_empty()) || self.plugin_pending();
                if !pending || t.elapsed() > LINGER {
                    return 0;
                }
            }
            fds.clear();
            srcs.clear();
            let mut add = |fd: RawFd, ev: libc::c_short, s: Src| {
                fds.push(libc::pollfd {
                    fd,
                    events: ev,
                    revents: 0,
                });
                srcs.push(s);
            };
            add(self.sigfd.as_raw_fd(), libc::POLLIN, Src::Sig);
            if self.finished_at.is_none() {
                add(self.listener.as_raw_fd(), libc::POLLIN, Src::Listener);
            }
            for (i, c) in self.conns.iter().enumerate() {
                let Some(c) = c else { continue };
                let mut ev = 0;
                let stdin_full = match c.exec {
                    Some(e) => self.execs[e]
                        .as_ref()
                        .is_some_and(|x| x.stdin_buf.len() >= HIGH),
                    None => self.stdin_buf.len() >= HIGH,
                };
                if !stdin_full {
                    ev |= libc::POLLIN;
                }
                if !c.outbuf.is_empty() {
                    ev |= libc::POLLOUT;
                }
                add(c.fd.as_raw_fd(), ev, Src::Conn(i));
            }
            for s in 0..2 {
                if let Some(fd) = &self.out[s] {
                    if self.output_flowing(s) {
                        add(fd.as_raw_fd(), libc::POLLIN, Src::Out(s));
                    }
                }
            }
            if let Some(fd) = self.log.as_mut().and_then(|l| l.plugin_mut()).filter(|p| p.has_pending()).map(|p| p.raw_fd()) {
                add(fd, libc::POLLOUT, Src::Plugin);
            }
            if let Some(fd) = &self.stdin {
                if !self.stdin_buf.is_empty() {
                    add(fd.as_raw_fd(), libc::POLLOUT, Src::Stdin);
                }
            }
            for (i, e) in self.execs.iter().enumerate() {
                let Some(e) = e else { continue };
                let flowing = match e.conn.and_then(|c| self.conns[c].as_ref()) {
                    Some(c) => c.outbuf.len() < HIGH,
                    None => true,
                };
                for s in 0..2 {
                    if let (Some(fd), true) = (&e.out[s], flowing) {
                        add(fd.as_raw_fd(), libc::POLLIN, Src::ExecOut(i, s));
                    }
                }
                if let (Some(fd), false) = (&e.stdin, e.stdin_buf.is_empty()) {
                    add(fd.as_raw_fd(), libc::POLLOUT, Src::ExecStdin(i));
                }
            }
            let timeout = if self.finished_at.is_some() || self.held_for_plugin() { 1000 } else { -1 };
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log!("poll: {e}");
                return 1;
            }
            for k in 0..fds.len() {
                let re = fds[k].revents;
                if re == 0 {
                    continue;
                }
                match srcs[k] {
                    Src::Sig => self.on_sigchld(),
                    Src::Listener => self.on_accept(),
                    Src::Conn(i) => {
                        if re & libc::POLLOUT != 0 {
                            self.flush_conn(i);
                        }
                        if re & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                            self.on_conn_readable(i);
                        }
                    }
                    Src::Out(s) => self.on_output(s),
                    Src::Stdin => self.on_stdin_writable(),
                    Src::Plugin => {
                        if let Some(p) = self.log.as_mut().and_then(|l| l.plugin_mut()) {
                            p.flush();
                        }
                    }
                    Src::ExecOut(e, s) => self.on_exec_output(e, s),
                    Src::ExecStdin(e) => self.on_exec_stdin_writable(e),
                }
            }
            self.finish_execs();
        }
    }

    fn on_sigchld(&mut self) {
        let mut si = [0u8; 128];
        while sys::read(self.sigfd.as_raw_fd(), &mut si).is_ok_and(|n| n > 0) {}
        loop {
            let mut st = 0;
            let p = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if p <= 0 {
                break;
            }
            if p == self.pid {
                self.init_status = Some(st);
                self.init_exited = Some(Instant::now());
                if !self.new_pidns {
                    // Nothing else may keep the output open once the init is gone.
                    if let Some(cg) = &self.cgroup {
                        let _ = cg.kill_all(libc::SIGKILL);
                    }
                }
            } else if let Some(e) = self.execs.iter_mut().flatten().find(|e| e.pid == p) {
                e.status = Some(st);
            }
        }
    }

    fn on_accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    self.add_conn(OwnedFd::from(s));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log!("accept: {e}");
                    break;
                }
            }
        }
    }

    fn drop_conn(&mut self, i: usize) {
        if let Some(c) = self.conns[i].take() {
            if let Some(e) = c.exec.and_then(|e| self.execs[e].as_mut()) {
                e.conn = None;
                // The client is gone: its stdin ends with it.
                e.stdin_close = true;
                e.stdin_buf.clear();
                e.stdin = None;
            }
        }
    }

    fn flush_conn(&mut self, i: usize) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        while !c.outbuf.is_empty() {
            match sys::write(c.fd.as_raw_fd(), &c.outbuf) {
                Ok(n) => {
                    c.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.drop_conn(i);
                    return;
                }
            }
        }
        if c.outbuf.is_empty() && c.outbuf.capacity() > HIGH {
            c.outbuf = Vec::new();
        }
    }

    fn on_conn_readable(&mut self, i: usize) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        let mut buf = [0u8; 16384];
        match sys::read(c.fd.as_raw_fd(), &mut buf) {
            Ok(0) => {
                self.drop_conn(i);
                return;
            }
            Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                self.drop_conn(i);
                return;
            }
        }
        loop {
            let Some(c) = self.conns[i].as_mut() else {
                return;
            };
            let req = match proto::split_frame(&c.inbuf) {
                Ok(Some((tag, range, len))) => {
                    let r = Request::decode(tag, &c.inbuf[range]);
                    c.inbuf.drain(..len);
                    r
                }
                Ok(None) => break,
                Err(e) => Err(e),
            };
            match req {
                Ok(r) => self.handle(i, r),
                Err(e) => {
                    log!("bad request: {e}");
                    self.drop_conn(i);
                    return;
                }
            }
        }
        if let Some(c) = self.conns[i].as_mut() {
            if c.inbuf.is_empty() && c.inbuf.capacity() > 65536 {
                c.inbuf = Vec::new();
            }
        }
        self.flush_conn(i);
    }

    fn handle(&mut self, i: usize, req: Request) {
        let exec = self.conns[i].as_ref().and_then(|c| c.exec);
        match req {
            Request::Attach { stdout, stderr } => {
                let c = self.conns[i].as_mut().unwrap();
                c.attach = [stdout, stderr || (self.tty && stdout)];
                c.wait = true;
                if let Some(x) = self.exit.clone() {
                    self.send_exited(i, x);
                }
            }
            Request::Stdin(d) => match exec {
                Some(e) => {
                    if let Some(x) = self.execs[e]
                        .as_mut()
                        .filter(|x| x.stdin.is_some() && !x.stdin_close)
                    {
                        x.stdin_buf.extend_from_slice(&d);
                    }
                }
                None => {
                    if self.stdin.is_some() && !self.stdin_close {
                        self.stdin_buf.extend_from_slice(&d);
                    }
                }
            },
            Request::CloseStdin => {
                match exec {
                    Some(e) => {
                        if let Some(x) = self.execs[e].as_mut() {
                            x.stdin_close = true;
                            if x.stdin_buf.is_empty() && !x.pty {
                                x.stdin = None;
                            }
                        }
                    }
                    None => {
                        self.stdin_close = true;
                        if self.stdin_buf.is_empty() && !self.tty {
                            self.stdin = None;
                        }
                    }
                }
                self.send(i, &Event::Ok);
            }
            Request::Resize { height, width } => {
                let fd = match exec {
                    Some(e) => self.execs[e]
                        .as_ref()
                        .filter(|x| x.pty)
                        .and_then(|x| x.out[0].as_ref())
                        .map(|f| f.as_raw_fd()),
                    None => self.out[0]
                        .as_ref()
                        .filter(|_| self.tty)
                        .map(|f| f.as_raw_fd()),
                };
                let ev = match fd {
                    Some(fd) => match sys::set_winsize(fd, height, width) {
                        Ok(()) => Event::Ok,
                        Err(e) => Event::Error(format!("resize: {e}")),
                    },
                    None if exec.is_none() && self.tty => Event::Ok, // already exited
                    None => Event::Error("the process has no terminal".into()),
                };
                self.send(i, &ev);
            }
            Request::Kill { signal, all } => {
                let ev = self.kill(exec, signal, all);
                self.send(i, &ev);
            }
            Request::Exec(req) => {
                if exec.is_some() {
                    self.send(i, &Event::Error("connection already runs an exec".into()));
                } else if self.init_status.is_some() {
                    self.send(
                        i,
                        &Event::StartFailed {
                            kind: StartErrorKind::Other,
                            message: format!("container {} is not running", self.id),
                        },
                    );
                } else {
                    match self.start_exec(*req, i) {
                        Ok((idx, pid)) => {
                            self.conns[i].as_mut().unwrap().exec = Some(idx);
                            self.send(i, &Event::ExecStarted { pid: pid as u32 });
                        }
                        Err((kind, message)) => self.send(i, &Event::StartFailed { kind, message }),
                    }
                }
            }
            Request::State => {
                let st = StateInfo {
                    id: self.id.clone(),
                    pid: self.pid as u32,
                    running: self.init_status.is_none(),
                    exit: self.exit.clone(),
                    execs: self
                        .execs
                        .iter()
                        .flatten()
                        .map(|e| (e.id.clone(), e.pid as u32))
                        .collect(),
                };
                self.send(i, &Event::State(st));
            }
            Request::Wait => {
                self.conns[i].as_mut().unwrap().wait = true;
                if let Some(x) = self.exit.clone() {
                    self.send_exited(i, x);
                }
            }
            Request::ExecWait { exec_id } => {
                let found = self.execs.iter().position(|x| {
                    x.as_ref()
                        .is_some_and(|x| x.id == exec_id && x.conn.is_none())
                });
                match found {
                    Some(idx) if exec.is_none() => {
                        let x = self.execs[idx].as_mut().unwrap();
                        x.conn = Some(i);
                        let pid = x.pid as u32;
                        self.conns[i].as_mut().unwrap().exec = Some(idx);
                        self.send(i, &Event::ExecStarted { pid });
                    }
                    _ => self.send(
                        i,
                        &Event::Error(format!("no exec {exec_id} without a client")),
                    ),
                }
            }
        }
    }

    fn kill(&mut self, exec: Option<usize>, signal: i32, all: bool) -> Event {
        let r = match exec {
            Some(e) => match self.execs[e].as_ref() {
                Some(x) if x.status.is_none() => {
                    sys::cvt(unsafe { libc::kill(x.pid, signal) }).map(|_| ())
                }
                _ => Err(io::Error::from_raw_os_error(libc::ESRCH)),
            },
            None if self.init_status.is_some() => Err(io::Error::from_raw_os_error(libc::ESRCH)),
            None => match (&self.cgroup, all) {
                (Some(cg), true) => cg.kill_all(signal),
                _ => sys::cvt(unsafe { libc::kill(self.pid, signal) }).map(|_| ()),
            },
        };
        match r {
            Ok(()) => Event::Ok,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                Event::Error("process already finished".into())
            }
            Err(e) => Event::Error(format!("kill: {}", process::describe(&e))),
        }
    }

    fn send_exited(&mut self, i: usize, x: ExitStatus) {
        if let Some(c) = self.conns[i].as_mut() {
            if c.exec.is_none() && !c.exited_sent {
                c.exited_sent = true;
                Event::Exited(x).encode(&mut c.outbuf);
            }
        }
    }

    fn on_output(&mut self, s: usize) {
        let Some(fd) = self.out[s].as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        let mut buf = std::mem::take(&mut self.buf);
        let r = sys::read(fd, &mut buf);
        match r {
            Ok(n) if n > 0 => {
                let data = &buf[..n];
                if let Some(l) = self.log.as_mut() {
                    if let Err(e) = l.write(s, data, Time::now()) {
                        log!("writing the log: {e}");
                    }
                }
                for c in self.conns.iter_mut().flatten() {
                    if c.attach[s] && c.exec.is_none() {
                        proto::encode_output(&mut c.outbuf, s as u8 + 1, data);
                    }
                }
                let idx: Vec<usize> = (0..self.conns.len())
                    .filter(|i| self.conns[*i].as_ref().is_some_and(|c| c.attach[s]))
                    .collect();
                for i in idx {
                    self.flush_conn(i);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            _ => {
                // EOF, or EIO from a pty whose slave side is closed.
                if let Some(l) = self.log.as_mut() {
                    let _ = l.close_stream(s, Time::now());
                }
                self.out[s] = None;
                if self.tty {
                    self.stdin = None;
                }
            }
        }
        self.buf = buf;
    }

    fn on_stdin_writable(&mut self) {
        let Some(fd) = self.stdin.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        match sys::write(fd, &self.stdin_buf) {
            Ok(n) => {
                self.stdin_buf.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.stdin_buf.clear();
                self.stdin = None;
            }
        }
        if self.stdin_buf.is_empty() && self.stdin_close && !self.tty {
            self.stdin = None;
        }
    }

    fn on_exec_output(&mut self, e: usize, s: usize) {
        let Some(x) = self.execs[e].as_mut() else {
            return;
        };
        let Some(fd) = x.out[s].as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        let mut buf = std::mem::take(&mut self.buf);
        match sys::read(fd, &mut buf) {
            Ok(n) if n > 0 => {
                if let Some(ci) = x.conn {
                    if let Some(c) = self.conns[ci].as_mut() {
                        proto::encode_output(&mut c.outbuf, s as u8 + 1, &buf[..n]);
                        self.flush_conn(ci);
                    }
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            _ => {
                x.out[s] = None;
                if x.pty {
                    x.stdin = None;
                }
            }
        }
        self.buf = buf;
    }

    fn on_exec_stdin_writable(&mut self, e: usize) {
        let Some(x) = self.execs[e].as_mut() else {
            return;
        };
        let Some(fd) = x.stdin.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        match sys::write(fd, &x.stdin_buf) {
            Ok(n) => {
                x.stdin_buf.drain(..n);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                x.stdin_buf.clear();
                x.stdin = None;
            }
        }
        if x.stdin_buf.is_empty() && x.stdin_close && !x.pty {
            x.stdin = None;
        }
    }

    /// Execs whose process exited and whose output is drained: tell their client.
    fn finish_execs(&mut self) {
        for idx in 0..self.execs.len() {
            let done = self.execs[idx]
                .as_ref()
                .is_some_and(|x| x.status.is_some() && x.out.iter().all(|o| o.is_none()));
            if !done {
                continue;
            }
            let x = self.execs[idx].take().unwrap();
            let (code, signal) = exit_status(x.status.unwrap());
            let st = ExitStatus {
                code,
                signal,
                oom_killed: false,
                finished_at: Time::now().format(false),
            };
            match x.conn {
                Some(ci) => {
                    self.send(ci, &Event::ExecExited(st));
                    if let Some(c) = self.conns[ci].as_mut() {
                        c.exec = None;
                    }
                    self.flush_conn(ci);
                }
                // its client (the runtime) is gone: the next one reads the exit here
                None => {
                    if let Some(p) = proto::exec_exit_file(&self.bundle, &x.id) {
                        if let Err(e) = write_json_atomic(&p, &st) {
                            log!("writing {}: {e}", p.display());
                        }
                    }
                }
            }
        }
        while matches!(self.execs.last(), Some(None)) {
            self.execs.pop();
        }
    }

    /// Bytes still waiting for a log-driver plugin's FIFO.
    fn plugin_pending(&mut self) -> bool {
        self.log.as_mut().and_then(|l| l.plugin_mut()).is_some_and(|p| p.has_pending())
    }

    fn ready_to_finish(&self) -> bool {
        self.init_status.is_some()
            && self.out.iter().all(|o| o.is_none())
            && self.execs.iter().all(|e| e.is_none())
    }

    /// The init exited and everything is drained: record, clean up, tell.
    fn finish(&mut self) {
        let (code, signal) = exit_status(self.init_status.unwrap());
        let oom = self.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0);
        let st = ExitStatus {
            code,
            signal,
            oom_killed: oom,
            finished_at: Time::now().format(false),
        };
        if let Some(p) = self.log.as_mut().and_then(|l| l.plugin_mut()) {
            p.flush();
            if p.dropped > 0 {
                log!("the log plugin did not keep up: {} messages dropped", p.dropped);
            }
        }
        if let Err(e) = write_exit(&self.bundle, &st) {
            log!("writing exit.json: {e}");
        }
        self.stdin = None;
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.remove() {
                log!("{e}");
            }
        }
        let _ = std::fs::remove_file(&self.sock_path);
        let _ = std::fs::remove_file(self.bundle.join("init.pid"));
        self.exit = Some(st.clone());
        for i in 0..self.conns.len() {
            if self.conns[i].as_ref().is_some_and(|c| c.wait) {
                self.send_exited(i, st.clone());
                self.flush_conn(i);
            }
        }
        self.finished_at = Some(Instant::now());
    }

    fn start_exec(
        &mut self,
        req: ExecRequest,
        conn: usize,
    ) -> Result<(usize, i32), (StartErrorKind, String)> {
        let p: Process = serde_json::from_value(req.process)
            .map_err(|e| (StartErrorKind::Other, format!("exec process: {e}")))?;
        let tty = p.terminal.unwrap_or(false);
        let other = |e: io::Error, what: &str| (StartErrorKind::Other, format!("{what}: {e}"));
        // The container's namespaces, opened now (mnt last when joining).
        let mut ns: Vec<(OwnedFd, libc::c_int)> = Vec::new();
        let mut pidns = None;
        let mut flags: Vec<libc::c_int> = self.namespaces.clone();
        flags.sort_by_key(|f| (*f == libc::CLONE_NEWNS) as u8);
        for f in flags {
            if f == libc::CLONE_NEWUSER {
                continue;
            }
            let path = PathBuf::from(format!("/proc/{}/ns/{}", self.pid, ns_proc_name(f)));
            let fd = sys::open(&path, libc::O_RDONLY, 0)
                .map_err(|e| other(e, &format!("open {}", path.display())))?;
            if f == libc::CLONE_NEWPID {
                pidns = Some(fd);
            } else {
                ns.push((fd, f));
            }
        }
        let null = || {
            sys::open(Path::new("/dev/null"), libc::O_RDWR, 0)
                .map_err(|e| other(e, "open /dev/null"))
        };
        let pipe = || sys::pipe().map_err(|e| other(e, "pipe"));
        let mut parent_in = None;
        let mut parent_out: [Option<OwnedFd>; 2] = [None, None];
        let child_fds: Option<[OwnedFd; 3]> = if tty {
            None
        } else {
            let cin = if req.stdin {
                let (r, w) = pipe()?;
                parent_in = Some(w);
                r
            } else {
                null()?
            };
            let (cout, cerr) = if req.detach {
                (null()?, null()?)
            } else {
                let (r1, w1) = pipe()?;
                let (r2, w2) = pipe()?;
                parent_out = [Some(r1), Some(r2)];
                (w1, w2)
            };
            Some([cin, cout, cerr])
        };
        let (sync_parent, sync_child) = sys::socketpair().map_err(|e| other(e, "socketpair"))?;
        let sync_raw = sync_child.as_raw_fd();
        let cgroup = self.cgroup.clone();
        let seccomp = self.seccomp.as_ref().map(|(p, f)| (p.as_slice(), *f));
        let host_bounding = self.host_bounding;
        let pidns_mode = match &pidns {
            Some(fd) => PidNs::Join(fd.as_raw_fd()),
            None => PidNs::Same,
        };
        let pid = fork_in_pidns(pidns_mode, cgroup.as_ref(), |v2_joined| {
            child_main(sync_raw, || {
                exec_child(
                    &berth_shim::init::Linux,
                    &p,
                    cgroup.as_ref().map(|c| (c, v2_joined)),
                    &ns,
                    child_fds,
                    sync_raw,
                    seccomp,
                    host_bounding,
                )
            })
        })
        .map_err(|e| other(e, "fork"))?;
        drop(sync_child);
        drop(ns);
        let pty = await_exec(&sync_parent).inspect_err(|_| unsafe {
            let mut st = 0;
            libc::waitpid(pid, &mut st, 0);
        })?;
        let stdin = if tty {
            let master = pty.ok_or((StartErrorKind::Other, "exec: no terminal".to_string()))?;
            let w = unsafe { libc::fcntl(master.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
            let w = if w >= 0 {
                Some(unsafe { OwnedFd::from_raw_fd(w) })
            } else {
                None
            };
            parent_out = [Some(master), None];
            if req.stdin {
                w
            } else {
                None
            }
        } else {
            parent_in
        };
        for fd in parent_out.iter().flatten().chain(stdin.iter()) {
            let _ = sys::set_nonblocking(fd.as_raw_fd(), true);
        }
        let x = Exec {
            id: req.exec_id,
            pid,
            conn: Some(conn),
            out: parent_out,
            stdin,
            stdin_buf: Vec::new(),
            stdin_close: false,
            pty: tty,
            status: None,
        };
        let idx = match self.execs.iter().position(|e| e.is_none()) {
            Some(i) => {
                self.execs[i] = Some(x);
                i
            }
            None => {
                self.execs.push(Some(x));
                self.execs.len() - 1
            }
        };
        Ok((idx, pid))
    }
}

/// `<bundle>/exit.json`, atomically (no fsync: atomicity matters, not durability).
pub fn write_exit(bundle: &Path, st: &ExitStatus) -> io::Result<()> {
    write_json_atomic(&bundle.join("exit.json"), st)
}

fn write_json_atomic(p: &Path, st: &ExitStatus) -> io::Result<()> {
    let tmp = p.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(st).map_err(io::Error::other)?)?;
    }
    std::fs::rename(&tmp, p)
}
