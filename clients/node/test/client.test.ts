// The Node client against a live `vod-signer serve` and `redis-server` (see harness.ts).
import * as assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { CallFailed, Client, ClientOptions, REASONS, Refused, SignatureState, VodSignerError } from '../src';
import { makeCertificates, Proxy, Redis, Signer, TOKENS } from './harness';

const MiB = 1 << 20;

let redis: Redis;
let signer: Signer;

before(async () => {
  redis = await Redis.start();
  signer = await Signer.start(redis);
});

after(() => {
  signer?.stop();
  redis?.stop();
  assert.deepEqual(signer?.leaks() ?? [], [], 'a secret or a whole signature leaked into the server log');
});

// A deadline far above a call's few milliseconds: a loaded CI machine must not turn a slow
// answer into a failed test (the deadline test sets its own).
const TIMEOUT_MS = 10_000;

function admin(target: string, options: ClientOptions = {}): Client {
  return new Client(target, { token: TOKENS.admin, timeoutMs: TIMEOUT_MS, ...options });
}

function retriesOf(client: Client): Array<[string, number, VodSignerError]> {
  const seen: Array<[string, number, VodSignerError]> = [];
  client.onRetry = (rpc, attempt, error) => seen.push([rpc, attempt, error]);
  return seen;
}

/** The error a promise rejects with, asserting it is of `kind`. */
async function rejection<E extends Error>(promise: Promise<unknown>, kind: new (...args: never[]) => E): Promise<E> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof kind, `expected ${kind.name}, got ${String(error)}`);
    return error;
  }
  assert.fail(`expected ${kind.name}, the call succeeded`);
}

/** A proxy in front of the plaintext server for one test, closed afterwards. */
async function withProxy(body: (proxy: Proxy) => Promise<void>): Promise<void> {
  const proxy = await Proxy.start(signer.port);
  try {
    await body(proxy);
  } finally {
    proxy.close();
  }
}

test('the Reason type is the SPEC list plus CALLER_UNAUTHENTICATED', () => {
  const spec = ['INVALID_REQUEST', 'SIGNATURE_MALFORMED', 'UNKNOWN_SECRET_ID', 'SIGNATURE_MISMATCH',
    'SIGNATURE_EXPIRED', 'SIGNATURE_NOT_YET_VALID', 'SIGNATURE_ALREADY_USED', 'SIGNATURE_REVOKED',
    'SIGNATURE_NOT_ISSUED', 'FILE_TOO_LARGE', 'RATE_LIMITED', 'PERMISSION_DENIED', 'NO_ACTIVE_KEY',
    'STORE_UNAVAILABLE', 'STORE_FULL'];
  assert.deepEqual([...REASONS].sort(), [...spec, 'CALLER_UNAUTHENTICATED'].sort());
});

test('unknown outcomes are retryable, refusals final', () => {
  for (const code of [grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.CANCELLED]) {
    assert.ok(new CallFailed(code, 'no answer').retryable, grpc.status[code]);
  }
  for (const code of [grpc.status.INVALID_ARGUMENT, grpc.status.PERMISSION_DENIED]) {
    assert.ok(!new CallFailed(code, 'final').retryable, grpc.status[code]);
  }
  assert.ok(!new Refused(grpc.status.FAILED_PRECONDITION, 'used', 'SIGNATURE_ALREADY_USED', {}).retryable);
  assert.ok(new Refused(grpc.status.UNAVAILABLE, 'away', 'STORE_UNAVAILABLE', {}).retryable);
});

describe('against a live server', () => {
  test('issue for a subject, verify, consume; a replay is refused SIGNATURE_ALREADY_USED', async () => {
    const client = admin(signer.target);
    try {
      const issued = await client.issue('user-42', {
        policy: { procedure: 'QCVB_SimpleProcessFile', source_context: 'user-42/upload-1', max_file_size: 100 * MiB },
      });
      assert.ok(issued.signature);
      assert.equal(issued.claims?.one_time_valid, true);
      assert.equal(issued.claims?.policy?.max_file_size, 100 * MiB);
      assert.equal(issued.claims?.policy?.source_context, 'user-42/upload-1');
      assert.ok(!issued.claims?.original.includes('subject'), 'the subject is never signed');

      const verified = await client.verify(issued.signature);
      assert.equal(verified.state, SignatureState.ISSUED);
      assert.equal(verified.claims?.random, issued.claims?.random);

      const consumed = await client.consume(issued.signature, { fileSize: 5 * MiB, idempotencyKey: 'upload-1' });
      assert.ok(Math.abs(consumed.consumed_at - Date.now() / 1000) < 60);
      assert.equal((await client.verify(issued.signature)).state, SignatureState.CONSUMED);

      const replay = await rejection(client.consume(issued.signature, { fileSize: 5 * MiB }), Refused);
      assert.equal(replay.reason, 'SIGNATURE_ALREADY_USED');
      assert.equal(replay.code, grpc.status.FAILED_PRECONDITION);
      assert.ok(replay.details.startsWith('SIGNATURE_ALREADY_USED: '));
      assert.equal(replay.retryable, false);
    } finally {
      client.close();
    }
  });

  test('list a subject newest first, then revoke all it holds', async () => {
    const client = admin(signer.target);
    try {
      const first = await client.issue('user-node-list', { policy: { source_context: 'n/1' } });
      const second = await client.issue('user-node-list', { policy: { source_context: 'n/2' } });
      await client.consume(first.signature);
      const page = await client.listSignatures('user-node-list');
      assert.deepEqual(page.signatures.map((s) => s.random), [second.claims?.random]);
      assert.equal(page.signatures[0].state, SignatureState.ISSUED);
      assert.equal(page.signatures[0].source_context, 'n/2');
      assert.equal(page.next_page_token, '');
      const both = await client.listSignatures('user-node-list', { states: ['ISSUED', 'CONSUMED'], pageSize: 1 });
      assert.equal(both.signatures.length, 1);
      assert.ok(both.next_page_token);
      assert.equal((await client.revokeSubject('user-node-list')).revoked, 1);
      const revoked = await rejection(client.consume(second.signature), Refused);
      assert.equal(revoked.reason, 'SIGNATURE_REVOKED');
      assert.equal((await client.revokeSubject('user-node-list')).revoked, 0);
    } finally {
      client.close();
    }
  });

  test('an oversize upload is refused FILE_TOO_LARGE and the signature stays usable', async () => {
    const client = admin(signer.target);
    try {
      const { signature } = await client.issue('user-43', { policy: { max_file_size: MiB } });
      const tooLarge = await rejection(client.consume(signature, { fileSize: MiB + 1 }), Refused);
      assert.equal(tooLarge.reason, 'FILE_TOO_LARGE');
      assert.equal(tooLarge.code, grpc.status.FAILED_PRECONDITION);
      assert.equal((await client.verify(signature)).state, SignatureState.ISSUED);
      await client.consume(signature, { fileSize: MiB });
    } finally {
      client.close();
    }
  });

  test('other refusals are typed', async () => {
    const client = admin(signer.target);
    try {
      assert.equal((await rejection(client.issue('user-44', { ttlSeconds: 7_776_001 }), Refused)).reason, 'INVALID_REQUEST');
      assert.equal((await rejection(client.verify('not a signature'), Refused)).reason, 'SIGNATURE_MALFORMED');
      const { signature } = await client.issue('user-44');
      assert.equal((await client.revoke(signature)).previous_state, SignatureState.ISSUED);
      assert.equal((await rejection(client.consume(signature), Refused)).reason, 'SIGNATURE_REVOKED');
    } finally {
      client.close();
    }
  });

  test('bearer token and roles', async () => {
    const anonymous = new Client(signer.target, { timeoutMs: TIMEOUT_MS });
    const app = new Client(signer.target, { token: TOKENS.app, timeoutMs: TIMEOUT_MS });
    const gateway = new Client(signer.target, { token: TOKENS.gateway, timeoutMs: TIMEOUT_MS });
    try {
      const noToken = await rejection(anonymous.issue('user-45'), Refused);
      assert.equal(noToken.reason, 'CALLER_UNAUTHENTICATED');
      assert.equal(noToken.code, grpc.status.UNAUTHENTICATED);
      const { signature } = await app.issue('user-45');
      assert.equal((await rejection(gateway.issue('user-45'), Refused)).reason, 'PERMISSION_DENIED');
      assert.ok((await gateway.consume(signature)).consumed_at > 0);
      assert.ok(!JSON.stringify(gateway).includes(TOKENS.gateway));
    } finally {
      anonymous.close();
      app.close();
      gateway.close();
    }
  });

  test('a lost consume reply is retried with the same key: same success, same consumed_at', () => withProxy(async (proxy) => {
    const direct = admin(signer.target);
    const client = admin(proxy.target);
    try {
      const retries = retriesOf(client);
      const { signature } = await direct.issue('user-46', { policy: { max_file_size: 10 * MiB } });
      proxy.loseNextReply();
      const consumed = await client.consume(signature, { fileSize: MiB, idempotencyKey: 'upload-46' });
      assert.equal(proxy.cuts, 1, 'the proxy did not cut the first answer');
      assert.deepEqual(retries.map(([rpc, attempt]) => [rpc, attempt]), [['ConsumeSignature', 1]]);
      assert.equal(retries[0][2].code, grpc.status.UNAVAILABLE);
      // The server did consume on the first attempt: the same key gets the same success ...
      const again = await direct.consume(signature, { fileSize: MiB, idempotencyKey: 'upload-46' });
      assert.equal(again.consumed_at, consumed.consumed_at);
      // ... and any other key a refusal.
      const replay = await rejection(direct.consume(signature, { fileSize: MiB, idempotencyKey: 'someone-else' }), Refused);
      assert.equal(replay.reason, 'SIGNATURE_ALREADY_USED');
    } finally {
      direct.close();
      client.close();
    }
  }));

  test('the lost reply is a real unknown outcome: UNAVAILABLE, yet the server consumed', () => withProxy(async (proxy) => {
    const direct = admin(signer.target);
    const client = admin(proxy.target, { attempts: 1 });
    try {
      const { signature } = await direct.issue('user-51');
      proxy.loseNextReply();
      const lost = await rejection(client.consume(signature, { idempotencyKey: 'upload-51' }), CallFailed);
      assert.equal(lost.code, grpc.status.UNAVAILABLE);
      assert.equal(lost.retryable, true);
      assert.equal(proxy.cuts, 1);
      assert.equal((await direct.verify(signature)).state, SignatureState.CONSUMED);
      assert.ok((await direct.consume(signature, { idempotencyKey: 'upload-51' })).consumed_at > 0);
    } finally {
      direct.close();
      client.close();
    }
  }));

  test('a lost consume reply without a key is retried with the one made-up key', () => withProxy(async (proxy) => {
    const direct = admin(signer.target);
    const client = admin(proxy.target);
    try {
      const retries = retriesOf(client);
      const { signature } = await direct.issue('user-47');
      proxy.loseNextReply();
      // Succeeds only if the retry carried the key the lost attempt stored.
      const consumed = await client.consume(signature);
      assert.equal(proxy.cuts, 1);
      assert.equal(retries.length, 1);
      assert.ok(consumed.consumed_at > 0);
      assert.equal((await direct.verify(signature)).state, SignatureState.CONSUMED);
    } finally {
      direct.close();
      client.close();
    }
  }));

  test('issue is not retried', () => withProxy(async (proxy) => {
    const client = admin(proxy.target);
    try {
      const retries = retriesOf(client);
      proxy.loseNextReply();
      const lost = await rejection(client.issue('user-48'), CallFailed);
      assert.equal(lost.code, grpc.status.UNAVAILABLE);
      assert.equal(lost.retryable, true); // the caller may decide to ask again
      assert.equal(proxy.cuts, 1);
      assert.deepEqual(retries, []);
    } finally {
      client.close();
    }
  }));

  test('verify is retried', () => withProxy(async (proxy) => {
    const direct = admin(signer.target);
    const client = admin(proxy.target);
    try {
      const retries = retriesOf(client);
      const { signature } = await direct.issue('user-49');
      proxy.loseNextReply();
      assert.equal((await client.verify(signature)).state, SignatureState.ISSUED);
      assert.equal(proxy.cuts, 1);
      assert.equal(retries.length, 1);
    } finally {
      direct.close();
      client.close();
    }
  }));

  test('the deadline bounds every attempt', () => withProxy(async (proxy) => {
    proxy.blackhole = true;
    const client = admin(proxy.target, { timeoutMs: 300, attempts: 2 });
    try {
      const started = Date.now();
      const late = await rejection(client.verify('anything'), CallFailed);
      const elapsed = Date.now() - started;
      assert.equal(late.code, grpc.status.DEADLINE_EXCEEDED);
      assert.ok(elapsed < 5000, `two 300 ms attempts took ${elapsed} ms`); // a hang would take forever
    } finally {
      client.close();
    }
  }));

  test('TLS with a private CA', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vodsigner-certs-'));
    const tls = makeCertificates(dir);
    const tlsSigner = await Signer.start(redis, tls);
    const client = new Client(tlsSigner.target, { tls: { rootCerts: tls.ca }, token: TOKENS.admin, timeoutMs: TIMEOUT_MS });
    const untrusting = new Client(tlsSigner.target, { tls: true, token: TOKENS.admin, timeoutMs: 5000, attempts: 1 });
    try {
      const { signature } = await client.issue('user-50');
      assert.equal((await client.verify(signature)).state, SignatureState.ISSUED);
      assert.ok((await client.consume(signature)).consumed_at > 0);
      // A client that does not trust the server's CA never gets an answer with a reason.
      const untrusted = await rejection(untrusting.verify(signature), CallFailed);
      assert.equal(untrusted.code, grpc.status.UNAVAILABLE);
    } finally {
      client.close();
      untrusting.close();
      tlsSigner.stop();
      assert.deepEqual(tlsSigner.leaks(), []);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
