#!/usr/bin/env bash
# Issue 5 numbers: `docker run --rm true`, `docker exec true`, 200 `docker run -d`
# one after another, memory per running container, and `docker ps` with 200
# running, on berth and (when dockerd is installed) on Moby, with the ratios.
# The image is the same busybox-static rootfs imported into both engines.
#
# With Moby present both engines run side by side and every measurement is paired:
# the commands alternate between them (which one goes first alternating too), so a
# machine whose speed drifts during the run (a shared VM does) weighs on both alike.
# Medians are reported, with `docker version` (the CLI's own floor) measured alike.
#
# The workload is the same on both: a container on the engine's default bridge, so
# Moby runs with its defaults (docker0, iptables; its rules and bridge are removed
# afterwards). MOBY_NET=0 runs Moby with `--bridge none` instead: a harder baseline,
# Moby then doing no network work at all while berth still does its own.
set -euo pipefail
export MOBY_NET=${MOBY_NET-1}
. "$(dirname "$0")/lib.sh"
N=${BENCH_CONTAINERS:-200}
RUNS=${BENCH_RUNS:-30}
trap 'stop_berth; stop_moby' EXIT

img=$(benchbox_tar)
start_berth
docker -H "unix://$BERTH_SOCK" import "$img" benchbox:latest >/dev/null
engines=("berth=$BERTH_SOCK=$BERTH_PID")
if start_moby; then
  docker -H "unix://$MOBY_SOCK" import "$img" benchbox:latest >/dev/null
  engines+=("moby=$MOBY_SOCK=$MOBY_PID")
else
  echo "(dockerd not installed: no Moby comparison)"
fi

python3 - "$N" "$RUNS" "${engines[@]}" <<'PY'
import glob, statistics, subprocess, sys, time
n, runs = int(sys.argv[1]), int(sys.argv[2])
eng = {a.split("=")[0]: (a.split("=")[1], int(a.split("=")[2])) for a in sys.argv[3:]}
names = list(eng)

def docker(name, *args, out=False):
    r = subprocess.run(["docker", "-H", f"unix://{eng[name][0]}", *args], check=True,
                       stdout=subprocess.PIPE if out else subprocess.DEVNULL)
    return r.stdout.decode() if out else None

def timed(name, *args):
    t = time.monotonic(); docker(name, *args); return time.monotonic() - t

def paired(k, *args):
    """k alternating rounds (the order flips every round): the median per engine."""
    res = {e: [] for e in names}
    for i in range(k):
        for e in (names if i % 2 == 0 else names[::-1]):
            res[e].append(timed(e, *args))
    return {e: statistics.median(v) for e, v in res.items()}

def pss(pid):
    try:
        for l in open(f"/proc/{pid}/smaps_rollup"):
            if l.startswith("Pss:"): return int(l.split()[1])
    except OSError: pass
    return 0

def tree(pid):
    """pid and its descendants (Moby's shims hang below its containerd)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop(); out.append(p)
        for f in glob.glob(f"/proc/{p}/task/*/children"):
            try: todo += [int(x) for x in open(f).read().split()]
            except OSError: pass
    return out

def comm(pid):
    try: return open(f"/proc/{pid}/comm").read().strip()
    except OSError: return ""

def engine_kib(name):
    # the containers' own processes (one `sleep` each) are not the engine's cost
    return sum(pss(p) for p in tree(eng[name][1]) if comm(p) != "sleep")

for e in names:
    for _ in range(3): docker(e, "run", "--rm", "benchbox", "true")
res = {e: {} for e in names}
for key, args in [("version", ["version"]), ("run", ["run", "--rm", "benchbox", "true"])]:
    for e, v in paired(runs, *args).items(): res[e][key] = v
for e in names: docker(e, "run", "-d", "--name", "bx", "benchbox", "sleep", "100000")
for e, v in paired(runs, "exec", "bx", "true").items(): res[e]["exec"] = v
for e in names: docker(e, "rm", "-f", "bx")
time.sleep(1)
mem0 = {e: engine_kib(e) for e in names}
# n x run -d, in alternating chunks of 10
tot = {e: 0.0 for e in names}
for c in range(0, n, 10):
    for e in (names if (c // 10) % 2 == 0 else names[::-1]):
        for _ in range(min(10, n - c)):
            tot[e] += timed(e, "run", "-d", "benchbox", "sleep", "100000")
time.sleep(2)
for e in names:
    res[e]["many"] = tot[e]
    res[e]["mem"] = (engine_kib(e) - mem0[e]) / n / 1024
for e, v in paired(20, "ps").items(): res[e]["ps"] = v
for e in names:
    ids = docker(e, "ps", "-aq", out=True).split()
    if ids: docker(e, "rm", "-f", *ids)
for e in names:
    r = res[e]
    print(f"{e:6} version {r['version']*1000:5.1f} ms | run --rm true {r['run']*1000:6.1f} ms | exec true {r['exec']*1000:5.1f} ms | "
          f"{n} x run -d {r['many']:6.2f} s ({r['many']/n*1000:.0f} ms each) | {r['mem']:.2f} MiB/container | ps ({n} running) {r['ps']*1000:5.1f} ms")
if "moby" in res:
    b, m = res["berth"], res["moby"]
    q = lambda k: b[k] / m[k]
    print(f"ratios berth/moby: run {q('run'):.2f} (target <= 0.25), exec {q('exec'):.2f} (<= 0.5), "
          f"run -d x{n} {q('many'):.2f} (<= 0.25), ps {q('ps'):.2f} (<= 1.0); "
          f"the CLI alone (docker version): {b['version']*1000:.1f} ms")
PY
