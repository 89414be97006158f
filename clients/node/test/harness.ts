// Test harness: a real redis-server and `vod-signer serve` on free loopback ports, a TCP
// proxy that can lose a reply, and test certificates. Every process is started here and
// killed at the end; nothing talks to a server that was already running.
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

import * as grpc from '@grpc/grpc-js';

// dist/test/harness.js -> the repository root.
export const REPO = resolve(__dirname, '..', '..', '..', '..');
export const SECRET_ID = 'AKIDnodeclienttest';
export const SECRET_KEY = 'node-client-secret-key-5e2a7c';
// Bearer tokens of the caller policy (admin: every RPC; app: issuer; gateway: consumer).
export const TOKENS = { admin: 'ops-token-js-82f1c0', app: 'app-token-js-4b9e17', gateway: 'gw-token-js-d03a66' };
const ROLES: Record<keyof typeof TOKENS, string> = { admin: 'admin', app: 'issuer', gateway: 'consumer' };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function binary(): string {
  const path = process.env.VOD_SIGNER_BIN || join(REPO, 'target', 'debug', 'vod-signer');
  if (!existsSync(path)) {
    throw new Error(`${path} not found: build it first with \`cargo build\` at the repository root (or set VOD_SIGNER_BIN)`);
  }
  return path;
}

export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolvePort(port));
    });
  });
}

function ping(port: number): Promise<boolean> {
  return new Promise((done) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.setTimeout(1000);
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.once('data', (data) => { socket.destroy(); done(data.toString().startsWith('+PONG')); });
    socket.once('error', () => done(false));
    socket.once('timeout', () => { socket.destroy(); done(false); });
  });
}

export class Redis {
  port = 0;
  #proc?: ChildProcess;
  #dir = mkdtempSync(join(tmpdir(), 'vodsigner-redis-'));

  static async start(): Promise<Redis> {
    const redis = new Redis();
    for (let i = 0; i < 5; i++) { // the free port may be taken between the probe and the bind
      redis.port = await freePort();
      redis.#proc = spawn('redis-server', ['--port', String(redis.port), '--bind', '127.0.0.1', '--save', '',
        '--appendonly', 'no', '--dir', redis.#dir], { stdio: 'ignore' });
      redis.#proc.on('error', () => undefined); // reported below as "did not start"
      for (let t = 0; t < 200 && redis.#proc.exitCode === null; t++) {
        if (await ping(redis.port)) return redis;
        await sleep(50);
      }
      redis.#proc.kill('SIGKILL');
    }
    throw new Error('redis-server did not start (is it on PATH? apt-get install redis-server)');
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  stop(): void {
    this.#proc?.kill('SIGKILL');
    rmSync(this.#dir, { recursive: true, force: true });
  }
}

export interface Certificates { ca: Buffer; caPath: string; certPath: string; keyPath: string }

/** A test CA and a server certificate for localhost / 127.0.0.1 it signs (openssl). */
export function makeCertificates(dir: string): Certificates {
  const p = (name: string) => join(dir, name);
  writeFileSync(p('server.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n'
    + 'keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n');
  const curve = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  const openssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'pipe', timeout: 60_000 });
  openssl('req', '-x509', ...curve, '-days', '2', '-subj', '/CN=vod-signer test CA', '-keyout', p('ca.key'), '-out', p('ca.crt'));
  openssl('req', ...curve, '-subj', '/CN=localhost', '-keyout', p('server.key'), '-out', p('server.csr'));
  openssl('x509', '-req', '-in', p('server.csr'), '-CA', p('ca.crt'), '-CAkey', p('ca.key'), '-CAcreateserial',
    '-days', '2', '-extfile', p('server.ext'), '-out', p('server.crt'));
  return { ca: readFileSync(p('ca.crt')), caPath: p('ca.crt'), certPath: p('server.crt'), keyPath: p('server.key') };
}

/** `vod-signer serve` with a temporary keys directory, a caller policy and the given Redis,
 * plus `extraArgs` (e.g. the notification flags). */
export class Signer {
  port = 0;
  readonly log: string[] = [];
  #proc!: ChildProcess;
  #dir = mkdtempSync(join(tmpdir(), 'vodsigner-node-'));

  private constructor(readonly tls?: Certificates) {}

  static async start(redis: Redis, tls?: Certificates, extraArgs: readonly string[] = []): Promise<Signer> {
    const signer = new Signer(tls);
    const keys = join(signer.#dir, 'keys');
    mkdirSync(keys);
    writeFileSync(join(keys, SECRET_ID), `${SECRET_KEY}\n`);
    const policy = join(signer.#dir, 'callers.toml');
    writeFileSync(policy, Object.entries(TOKENS).map(([name, token]) =>
      `[[caller]]\nname = "${name}"\nroles = ["${ROLES[name as keyof typeof TOKENS]}"]\n`
      + `token_sha256 = ["${createHash('sha256').update(token).digest('hex')}"]\n`).join('\n'));
    // Trace level, so the leak check (leaks()) sees every line the server can write.
    const args = ['serve', '--listen', '127.0.0.1:0', '--keys-dir', keys, '--active-key', SECRET_ID,
      '--redis-url', redis.url, '--caller-policy', policy, '--log-format', 'json', '--log-level', 'trace',
      '--health-interval-ms', '100'];
    if (tls) args.push('--tls-cert', tls.certPath, '--tls-key', tls.keyPath);
    args.push(...extraArgs);
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (!k.startsWith('VOD_SIGNER_') && k !== 'RUST_LOG') env[k] = v;
    }
    env.VOD_SIGNER_METRICS_LISTEN = 'off';
    signer.#proc = spawn(binary(), args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
    const started = new Promise<number>((resolvePort, reject) => {
      const timer = setTimeout(() => reject(new Error(`vod-signer did not start:\n${signer.log.slice(-20).join('\n')}`)), 30_000);
      createInterface({ input: signer.#proc.stderr! }).on('line', (line) => {
        signer.log.push(line);
        try {
          const entry = JSON.parse(line);
          const message = entry.message ?? entry.fields?.message;
          if (message === 'serving gRPC') {
            clearTimeout(timer);
            resolvePort(Number(String(entry.addr ?? entry.fields?.addr).split(':').pop()));
          }
        } catch {
          // not JSON: kept in the log all the same
        }
      });
      signer.#proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`vod-signer exited (${code}):\n${signer.log.join('\n')}`)); });
    });
    signer.port = await started;
    await signer.#waitServing();
    return signer;
  }

  get target(): string {
    return `${this.tls ? 'localhost' : '127.0.0.1'}:${this.port}`;
  }

  /** Until the health service says SERVING (the store answers), asked with a raw unary call. */
  async #waitServing(): Promise<void> {
    const creds = this.tls ? grpc.credentials.createSsl(this.tls.ca) : grpc.credentials.createInsecure();
    const client = new grpc.Client(this.target, creds);
    try {
      for (let i = 0; i < 200; i++) {
        const status = await new Promise<Buffer | undefined>((done) => client.makeUnaryRequest(
          '/grpc.health.v1.Health/Check', (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0),
          { deadline: Date.now() + 1000 }, (error, value) => done(error ? undefined : value)));
        if (status?.equals(Buffer.from([0x08, 0x01]))) return; // status: SERVING
        await sleep(100);
      }
      throw new Error('vod-signer never reported SERVING');
    } finally {
      client.close();
    }
  }

  stop(): void {
    this.#proc.kill('SIGKILL');
    rmSync(this.#dir, { recursive: true, force: true });
  }

  /** Lines of the server log holding a key, a token, one of `others` or a whole signature. */
  leaks(...others: string[]): string[] {
    return this.log.filter((line) =>
      [SECRET_KEY, ...Object.values(TOKENS), ...others].some((secret) => line.includes(secret))
      || (line.match(/[A-Za-z0-9+/=]{40,}/g) ?? []).some((run) =>
        Buffer.from(run, 'base64').subarray(20).toString('latin1').startsWith('secretId=')));
  }
}

/** Follows HTTP/2 frame boundaries in one direction of a connection (the server's side sends
 * no preface, so frames start at byte 0). */
class FrameScanner {
  #header = Buffer.alloc(0);
  #skip = 0;

  /** [type, stream id] of every frame whose header completes in `chunk`. */
  feed(chunk: Buffer): Array<[number, number]> {
    const found: Array<[number, number]> = [];
    let i = 0;
    while (i < chunk.length) {
      if (this.#skip > 0) {
        const take = Math.min(this.#skip, chunk.length - i);
        this.#skip -= take;
        i += take;
        continue;
      }
      const piece = chunk.subarray(i, i + 9 - this.#header.length);
      this.#header = Buffer.concat([this.#header, piece]);
      i += piece.length;
      if (this.#header.length === 9) {
        this.#skip = this.#header.readUIntBE(0, 3);
        found.push([this.#header[3], this.#header.readUInt32BE(5) & 0x7fffffff]);
        this.#header = Buffer.alloc(0);
      }
    }
    return found;
  }
}

/** A TCP proxy in front of a plaintext gRPC server that can make a reply get lost.
 *
 * `loseNextReply()` arms it: the next HTTP/2 HEADERS frame the server sends on a request
 * stream (the start of an RPC's answer, sent only once the handler finished, so the server
 * has done the work) is not forwarded; the proxy destroys both connections instead. The
 * client sees UNAVAILABLE without knowing whether the call took effect. It is one-shot.
 * `blackhole` makes it accept connections and forward nothing (a deadline test). */
export class Proxy {
  port = 0;
  armed = false;
  blackhole = false;
  connections = 0;
  cuts = 0;
  #server = net.createServer();
  #sockets = new Set<net.Socket>();

  private constructor(readonly upstream: number) {}

  static async start(upstream: number): Promise<Proxy> {
    const proxy = new Proxy(upstream);
    proxy.#server.on('connection', (client) => proxy.#connect(client));
    await new Promise<void>((done) => proxy.#server.listen(0, '127.0.0.1', done));
    proxy.port = (proxy.#server.address() as net.AddressInfo).port;
    return proxy;
  }

  get target(): string {
    return `127.0.0.1:${this.port}`;
  }

  loseNextReply(): void {
    this.armed = true;
  }

  #connect(client: net.Socket): void {
    this.connections++;
    this.#sockets.add(client);
    client.on('error', () => undefined);
    if (this.blackhole) return; // held open, never read: the caller's deadline must end the call
    const server = net.connect(this.upstream, '127.0.0.1');
    this.#sockets.add(server);
    server.on('error', () => client.destroy());
    client.on('close', () => server.destroy());
    server.on('close', () => client.destroy());
    const frames = new FrameScanner();
    client.on('data', (chunk) => server.write(chunk));
    server.on('data', (chunk: Buffer) => {
      const answer = frames.feed(chunk).some(([type, stream]) => type === 0x1 && stream !== 0);
      if (this.armed && answer) {
        this.armed = false;
        this.cuts++;
        client.destroy();
        server.destroy();
        return;
      }
      client.write(chunk);
    });
  }

  close(): void {
    for (const socket of this.#sockets) socket.destroy();
    this.#server.close();
  }
}

/** A fresh Standard Webhooks secret, as `--notify-secret-file` takes it. */
export function webhookSecret(): string {
  return `whsec_${randomBytes(32).toString('base64')}`;
}

/** One POST the receiver got. */
export interface Push { path: string; headers: http.IncomingHttpHeaders; body: Buffer }

/** A real HTTP server on a free loopback port that takes vod-signer's pushes: it records
 * every POST and answers 204. */
export class Receiver {
  readonly pushes: Push[] = [];
  port = 0;
  #server = http.createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      this.pushes.push({ path: request.url ?? '', headers: request.headers, body: Buffer.concat(chunks) });
      response.writeHead(204).end();
    });
  });

  static async start(): Promise<Receiver> {
    const receiver = new Receiver();
    await new Promise<void>((done) => receiver.#server.listen(0, '127.0.0.1', done));
    receiver.port = (receiver.#server.address() as net.AddressInfo).port;
    return receiver;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}/hook`;
  }

  /** The first push that `matches`, waiting at most `timeoutMs` for it. */
  async waitFor(matches: (push: Push) => boolean, timeoutMs: number): Promise<Push> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.pushes.find(matches);
      if (found) return found;
      if (Date.now() > deadline) {
        throw new Error(`no matching push within ${timeoutMs} ms; got ${this.pushes.map((p) => p.body.toString().slice(0, 120)).join(' | ')}`);
      }
      await sleep(50);
    }
  }

  close(): void {
    this.#server.closeAllConnections();
    this.#server.close();
  }
}
