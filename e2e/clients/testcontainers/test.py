"""testcontainers-python against a berth node: a container with an exposed port,
waited for by a log line, then reached on the published port. DOCKER_HOST names the
node; IMAGE is a busybox image it has. Ryuk (the reaper) is disabled: its image
lives on Docker Hub only."""
import os
import urllib.request

from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

image = os.environ["IMAGE"]
cmd = ["sh", "-c", "mkdir -p /www && echo tc-ok > /www/index.html && echo server-ready && exec httpd -f -p 8080 -h /www"]
container = (
    DockerContainer(image)
    .with_command(cmd)
    .with_exposed_ports(8080)
    .waiting_for(LogMessageWaitStrategy("server-ready").with_startup_timeout(60))
)
with container as c:
    host = c.get_container_host_ip()
    port = c.get_exposed_port(8080)
    body = urllib.request.urlopen(f"http://{host}:{port}/", timeout=10).read()
    assert body == b"tc-ok\n", body
    name = c.get_wrapped_container().name
print("testcontainers: ok", name)
