//! berth-shim: owns one container's processes.
//!
//! `berth-shim <bundle>` reads `<bundle>/shim.json` and `<bundle>/config.json`,
//! detaches into its own session, starts the container's init, reports `Started` or
//! the start error on the socket it inherited as stdin, then serves
//! `<bundle>/shim.sock` until the init has exited and its output is drained:
//! `<bundle>/exit.json` is written, the cgroup removed, clients told, and it exits.
//! Its own errors go to `<bundle>/shim.log`. See `berth_shim::proto` for the protocol.

mod shim;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 2 || args[1].starts_with('-') {
        eprintln!("usage: berth-shim <bundle-dir>");
        std::process::exit(2);
    }
    std::process::exit(shim::run(std::path::Path::new(&args[1])));
}
