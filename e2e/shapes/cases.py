# The requests the shapes harness (e2e/tests/shapes.rs) sends, in order, to Moby (its
# answers recorded in moby-20.10.json) and to berth. Prints them as JSON.
import json
V = "/v1.41"
cases = []
def c(name, method, path, body=None, kind="json", **kw):
    d = {"name": name, "method": method, "path": path, "kind": kind}
    if body is not None:
        d["body"] = body
    d.update(kw)
    cases.append(d)

UP = {"Connection": "Upgrade", "Upgrade": "tcp"}
LBL = '{"label":["shapes={n}"]}'

# system
c("ping", "GET", "/_ping", kind="text", headers_exact=["Docker-Experimental", "Ostype", "Cache-Control", "Pragma", "Swarm", "Builder-Version"])
c("ping head", "HEAD", "/_ping", kind="none")
c("version", "GET", V + "/version")
c("info", "GET", V + "/info")
c("unversioned version", "GET", "/version")
c("too new", "GET", "/v1.99/version", exact_ignore=["/message"])
c("no route", "GET", V + "/nope")
c("other method", "POST", V + "/containers/json")

# images
c("pull", "POST", V + "/images/create?fromImage=busybox&tag=latest", kind="lines")
c("pull unknown", "POST", V + "/images/create?fromImage={reg}/nope-{n}&tag=latest", kind="lines")
c("image list", "GET", V + "/images/json")
c("image list digests", "GET", V + "/images/json?digests=1&filters={\"reference\":[\"busybox\"]}")
c("image inspect", "GET", V + "/images/busybox:latest/json")
c("image history", "GET", V + "/images/busybox:latest/history")
c("image tag", "POST", V + "/images/busybox:latest/tag?repo={n}-tag&tag=v1", kind="text")
c("image tag missing", "POST", V + "/images/nope-{n}:latest/tag?repo={n}-x&tag=v1")
c("image inspect missing", "GET", V + "/images/nope-{n}/json")
c("distribution", "GET", V + "/distribution/busybox:latest/json")
c("distribution missing", "GET", V + "/distribution/{reg}/nope-{n}:latest/json", exact_ignore=["/message"])

# containers
c("create", "POST", V + "/containers/create?name={n}-c1",
  {"Image": "busybox", "Cmd": ["sh", "-c", "echo out; echo err >&2; sleep 300"], "Labels": {"shapes": "{n}"}},
  save={"c1": "/Id"})
c("create missing image", "POST", V + "/containers/create", {"Image": "nope-{n}"})
c("create name taken", "POST", V + "/containers/create?name={n}-c1", {"Image": "busybox"})
c("create bad name", "POST", V + "/containers/create?name=a/b", {"Image": "busybox"})
c("inspect created", "GET", V + "/containers/{c1}/json")
c("start", "POST", V + "/containers/{c1}/start", kind="text")
c("start again", "POST", V + "/containers/{c1}/start", kind="text")
c("inspect running", "GET", V + "/containers/{c1}/json", sleep_ms=300)
c("list", "GET", V + "/containers/json?filters=" + LBL)
c("list all size", "GET", V + "/containers/json?all=1&size=1&filters=" + LBL)
c("list bad filter", "GET", V + "/containers/json?filters={\"nope\":[\"x\"]}")
c("top", "GET", V + "/containers/{c1}/top")
c("logs", "GET", V + "/containers/{c1}/logs?stdout=1&stderr=1", kind="mux")
c("logs timestamps", "GET", V + "/containers/{c1}/logs?stdout=1&timestamps=1&tail=1", kind="mux", exact_ignore=["/frames"])
c("logs no stream", "GET", V + "/containers/{c1}/logs")
c("stats", "GET", V + "/containers/{c1}/stats?stream=0")
c("changes", "GET", V + "/containers/{c1}/changes")
c("exec create", "POST", V + "/containers/{c1}/exec",
  {"Cmd": ["sh", "-c", "echo x; echo y >&2"], "AttachStdout": True, "AttachStderr": True}, save={"e1": "/Id"})
c("exec create no cmd", "POST", V + "/containers/{c1}/exec", {"AttachStdout": True})
c("exec inspect new", "GET", V + "/exec/{e1}/json")
c("exec start", "POST", V + "/exec/{e1}/start", {"Detach": False, "Tty": False}, kind="mux", headers=UP)
c("exec inspect done", "GET", V + "/exec/{e1}/json", sleep_ms=200)
c("exec missing", "GET", V + "/exec/nope-{n}/json")
c("pause", "POST", V + "/containers/{c1}/pause", kind="text")
c("pause again", "POST", V + "/containers/{c1}/pause")
c("inspect paused", "GET", V + "/containers/{c1}/json")
c("exec paused", "POST", V + "/containers/{c1}/exec", {"Cmd": ["true"]})
c("unpause", "POST", V + "/containers/{c1}/unpause", kind="text")
c("resize no tty", "POST", V + "/containers/{c1}/resize?h=10&w=20", kind="text")
c("update", "POST", V + "/containers/{c1}/update", {"CpuShares": 512})
c("rename", "POST", V + "/containers/{c1}/rename?name={n}-c1b", kind="text")
c("archive head", "HEAD", V + "/containers/{c1}/archive?path=/etc/passwd", kind="stat")
c("archive get", "GET", V + "/containers/{c1}/archive?path=/etc/hostname", kind="none")
c("archive missing", "GET", V + "/containers/{c1}/archive?path=/nope")
c("archive put", "PUT", V + "/containers/{c1}/archive?path=/tmp", tar={"put.txt": "hello\n"}, kind="text")
c("kill", "POST", V + "/containers/{c1}/kill", kind="text")
c("wait", "POST", V + "/containers/{c1}/wait")
c("stop stopped", "POST", V + "/containers/{c1}/stop", kind="text")
c("kill stopped", "POST", V + "/containers/{c1}/kill")
c("inspect exited", "GET", V + "/containers/{c1}/json")
c("attach exited logs", "POST", V + "/containers/{c1}/attach?logs=1&stdout=1&stderr=1", kind="mux", headers=UP)
c("export", "GET", V + "/containers/{c1}/export", kind="none")
c("commit", "POST", V + "/commit?container={c1}&repo={n}-commit&tag=v1&comment=c", {}, save={"img1": "/Id"})
c("commit missing", "POST", V + "/commit?container=nope-{n}", {})
c("image inspect committed", "GET", V + "/images/{n}-commit:v1/json")
c("remove", "DELETE", V + "/containers/{c1}", kind="text")
c("remove missing", "DELETE", V + "/containers/{c1}")
c("create c2", "POST", V + "/containers/create?name={n}-c2",
  {"Image": "busybox", "Cmd": ["true"], "Labels": {"shapes": "{n}"}, "Tty": True}, save={"c2": "/Id"})
c("start c2", "POST", V + "/containers/{c2}/start", kind="text")
c("wait c2", "POST", V + "/containers/{c2}/wait")
c("logs tty", "GET", V + "/containers/{c2}/logs?stdout=1&stderr=1", kind="text")
c("prune containers", "POST", V + "/containers/prune?filters=" + LBL)

# volumes
c("volume create", "POST", V + "/volumes/create", {"Name": "{n}-v1", "Labels": {"shapes": "{n}"}})
c("volume create anonymous", "POST", V + "/volumes/create", {}, save={"v2": "/Name"})
c("volume inspect", "GET", V + "/volumes/{n}-v1")
c("volume list", "GET", V + "/volumes?filters=" + LBL)
c("volume create bad driver", "POST", V + "/volumes/create", {"Name": "{n}-v3", "Driver": "nope"})
c("volume remove", "DELETE", V + "/volumes/{n}-v1", kind="text")
c("volume remove missing", "DELETE", V + "/volumes/{n}-v1")
c("volume remove anonymous", "DELETE", V + "/volumes/{v2}", kind="text")
c("volume prune", "POST", V + "/volumes/prune?filters=" + LBL)

# networks
c("network create", "POST", V + "/networks/create", {"Name": "{n}-net", "Labels": {"shapes": "{n}"}}, save={"net1": "/Id"})
c("network create taken", "POST", V + "/networks/create", {"Name": "{n}-net", "CheckDuplicate": True})
c("network inspect", "GET", V + "/networks/{net1}")
c("network list", "GET", V + "/networks?filters=" + LBL)
c("create c3", "POST", V + "/containers/create?name={n}-c3",
  {"Image": "busybox", "Cmd": ["sleep", "300"], "Labels": {"shapes": "{n}"}}, save={"c3": "/Id"})
c("network connect", "POST", V + "/networks/{net1}/connect", {"Container": "{c3}"}, kind="text")
c("start c3", "POST", V + "/containers/{c3}/start", kind="text")
c("inspect c3", "GET", V + "/containers/{c3}/json")
c("network inspect connected", "GET", V + "/networks/{net1}")
c("network disconnect", "POST", V + "/networks/{net1}/disconnect", {"Container": "{c3}", "Force": True}, kind="text")
c("network remove", "DELETE", V + "/networks/{net1}", kind="text")
c("network remove missing", "DELETE", V + "/networks/{net1}")
c("network prune", "POST", V + "/networks/prune?filters=" + LBL)

# build
c("build", "POST", V + "/build?t={n}-build:v1&rm=1", tar={"Dockerfile": "FROM busybox\nRUN echo hello\nCMD [\"sh\"]\n"}, kind="lines")
c("build failing run", "POST", V + "/build?rm=1", tar={"Dockerfile": "FROM busybox\nRUN exit 3\n"}, kind="lines")
c("build unknown instruction", "POST", V + "/build", tar={"Dockerfile": "FROM busybox\nFOO bar\n"}, kind="lines")
c("build no dockerfile", "POST", V + "/build", tar={"x": "y"}, kind="lines")
c("build prune", "POST", V + "/build/prune", exact_ignore=["/message"])
c("image save", "GET", V + "/images/get?names={n}-build:v1", kind="none")
c("image tag for push", "POST", V + "/images/busybox:latest/tag?repo={reg}/{n}-push&tag=v1", kind="text")
c("push", "POST", V + "/images/{reg}/{n}-push:v1/push", kind="lines", headers={"X-Registry-Auth": "e30="})
c("auth", "POST", V + "/auth", {"username": "u", "password": "p", "serveraddress": "{reg}"})

# images removal
c("image delete in use", "DELETE", V + "/images/busybox:latest")
c("image delete tag", "DELETE", V + "/images/{n}-tag:v1")
c("image delete committed", "DELETE", V + "/images/{n}-commit:v1")
c("image delete missing", "DELETE", V + "/images/nope-{n}:v1")
c("image prune", "POST", V + "/images/prune?filters=" + LBL)
c("system df", "GET", V + "/system/df")
c("events", "GET", V + "/events?since={t0}&until={now}&filters=" + LBL, kind="lines")

# versions
c("v1.24 inspect", "GET", "/v1.24/containers/{c3}/json")
c("v1.24 list", "GET", "/v1.24/containers/json?filters=" + LBL)
c("v1.24 images", "GET", "/v1.24/images/json?filter=busybox")
c("v1.30 volume prune", "POST", "/v1.30/volumes/prune?filters=" + LBL)

# not served by berth, or feature off
c("plugins", "GET", V + "/plugins")
c("plugin missing", "GET", V + "/plugins/nope-{n}/json")
c("plugin privileges", "GET", V + "/plugins/privileges?remote={reg}/nope-{n}", exact_ignore=["/message"])
c("swarm", "GET", V + "/swarm")
c("swarm leave", "POST", V + "/swarm/leave?force=1")
c("services", "GET", V + "/services")
c("nodes", "GET", V + "/nodes")
c("tasks logs", "GET", V + "/tasks/x/logs")
c("secrets", "GET", V + "/secrets")
c("configs create", "POST", V + "/configs/create", {})

# clean up
c("remove c3", "DELETE", V + "/containers/{c3}?force=1", kind="text")
c("image delete build", "DELETE", V + "/images/{n}-build:v1")
c("image delete push", "DELETE", V + "/images/{reg}/{n}-push:v1")
print(json.dumps(cases, indent=1))
