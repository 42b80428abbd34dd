// dockerode (npm) against a berth node: create, attach, start, logs, exec, inspect,
// each answer checked as a strict client reads it. DOCKER_SOCK: the node's socket;
// IMAGE: a busybox image the node has. Exits non-zero with the reason on failure.
'use strict';
const Docker = require('dockerode');
const assert = require('assert');
const { PassThrough } = require('stream');

const docker = new Docker({ socketPath: process.env.DOCKER_SOCK });
const image = process.env.IMAGE;

function collect(stream) {
  const out = new PassThrough(), err = new PassThrough();
  const chunks = { out: [], err: [] };
  out.on('data', (c) => chunks.out.push(c));
  err.on('data', (c) => chunks.err.push(c));
  docker.modem.demuxStream(stream, out, err);
  return () => ({ out: Buffer.concat(chunks.out).toString(), err: Buffer.concat(chunks.err).toString() });
}

async function main() {
  const v = await docker.version();
  assert.ok(v.ApiVersion, 'version has ApiVersion');

  // attach before start, stdin to the process, stdout and stderr demultiplexed
  const c = await docker.createContainer({
    Image: image,
    Cmd: ['sh', '-c', 'echo hello; echo oops >&2; read line; echo "got $line"'],
    OpenStdin: true, StdinOnce: true, AttachStdin: true, AttachStdout: true, AttachStderr: true,
    Labels: { 'berth.test': 'dockerode' },
  });
  assert.match(c.id, /^[0-9a-f]{64}$/);
  const stream = await c.attach({ stream: true, stdin: true, stdout: true, stderr: true, hijack: true });
  const got = collect(stream);
  const ended = new Promise((resolve) => stream.on('end', resolve));
  await c.start();
  stream.write('ping\n');
  const w = await c.wait();
  assert.deepStrictEqual(w, { Error: null, StatusCode: 0 });
  await Promise.race([ended, new Promise((r) => setTimeout(r, 2000))]);
  const o = got();
  assert.strictEqual(o.out, 'hello\ngot ping\n');
  assert.strictEqual(o.err, 'oops\n');

  // logs as a buffer (follow=false): multiplexed frames
  const logs = await c.logs({ stdout: true, stderr: true, follow: false });
  const text = logs.toString('latin1');
  assert.ok(text.includes('hello\n') && text.includes('got ping\n') && text.includes('oops\n'), JSON.stringify(text));

  // inspect: Docker's keys and types
  const i = await c.inspect();
  assert.strictEqual(i.Id, c.id);
  assert.strictEqual(i.State.Status, 'exited');
  assert.strictEqual(i.State.ExitCode, 0);
  assert.strictEqual(i.Config.Labels['berth.test'], 'dockerode');
  assert.strictEqual(i.Config.OpenStdin, true);
  assert.ok(Array.isArray(i.Mounts));
  await c.remove();

  // exec in a running container
  const r = await docker.createContainer({ Image: image, Cmd: ['sleep', '300'] });
  await r.start();
  const ex = await r.exec({ Cmd: ['sh', '-c', 'echo exec-out; echo exec-err >&2; exit 3'], AttachStdout: true, AttachStderr: true });
  assert.match(ex.id, /^[0-9a-f]{64}$/);
  const es = await ex.start({ hijack: true, stdin: false });
  const eg = collect(es);
  await new Promise((resolve) => es.on('end', resolve));
  assert.deepStrictEqual(eg(), { out: 'exec-out\n', err: 'exec-err\n' });
  const ei = await ex.inspect();
  assert.strictEqual(ei.ExitCode, 3);
  assert.strictEqual(ei.Running, false);

  const list = await docker.listContainers({ filters: { id: [r.id] } });
  assert.strictEqual(list.length, 1);
  assert.strictEqual(list[0].State, 'running');
  await r.remove({ force: true });
  // a container that is gone: 404 with Docker's message
  await assert.rejects(r.inspect(), (e) => e.statusCode === 404 && /No such container/.test(e.json.message));
  console.log('dockerode: ok');
}

main().catch((e) => { console.error(e); process.exit(1); });
