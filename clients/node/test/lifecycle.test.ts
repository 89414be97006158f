// The upload's end (completeUpload, ABANDONED), its notifications (pushed and checked with
// verifyWebhook, or pulled and confirmed), and how retries wait (RetryInfo, backoff, budget).
// The push and pull tests run their own `vod-signer serve` with the notification flags, and a
// real HTTP receiver for pushes (see harness.ts).
import * as assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import {
  Client, InvalidTimestamp, MissingHeader, NoMatchingSignature, Refused, retryWaitMs, SignatureState,
  TimestampOutOfTolerance, VodSignerError, verifyWebhook,
} from '../src';
import { withRetries } from '../src/client';
import { CallFailed } from '../src/errors';
import { Push, Receiver, Redis, Signer, TOKENS, webhookSecret } from './harness';

const TIMEOUT_MS = 10_000;
/** Short, so the abandoned upload's push comes within the test. */
const COMPLETION_WINDOW_SECONDS = 3;

// The test vector Standard Webhooks publishes (and Svix's libraries test against).
const VECTOR = {
  secret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
  id: 'msg_p5jXN8AQM9LWM0D4loKWxJek',
  timestamp: 1614265330,
  body: '{"test": 2432232314}',
  signature: 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
};

function vectorHeaders(overrides: Record<string, string> = {}): Record<string, string> {
  return {
    'webhook-id': VECTOR.id,
    'webhook-timestamp': String(VECTOR.timestamp),
    'webhook-signature': VECTOR.signature,
    ...overrides,
  };
}

function sign(secret: string, id: string, timestamp: number, body: string): string {
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
  return `v1,${createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest('base64')}`;
}

const at = { now: VECTOR.timestamp };

describe('verifyWebhook', () => {
  test('the published test vector verifies', () => {
    const near = { now: VECTOR.timestamp + 10 };
    assert.deepEqual(verifyWebhook(vectorHeaders(), VECTOR.body, VECTOR.secret, near), { test: 2432232314 });
    // Header names in any case, a fetch Headers, the body as bytes, the secret without its
    // prefix or as the raw key bytes.
    const mixed = { 'Webhook-Id': VECTOR.id, 'WEBHOOK-TIMESTAMP': String(VECTOR.timestamp), 'Webhook-Signature': VECTOR.signature };
    assert.ok(verifyWebhook(mixed, Buffer.from(VECTOR.body), VECTOR.secret, near));
    assert.ok(verifyWebhook(new Headers(vectorHeaders()), VECTOR.body, VECTOR.secret, near));
    const bare = VECTOR.secret.replace(/^whsec_/, '');
    assert.ok(verifyWebhook(vectorHeaders(), VECTOR.body, bare, near));
    assert.ok(verifyWebhook(vectorHeaders(), VECTOR.body, Buffer.from(bare, 'base64'), near));
  });

  const tampered: Array<[string, string, Record<string, string>, string]> = [
    ['body', '{"test": 2432232315}', vectorHeaders(), VECTOR.secret],
    ['body (a byte more)', `${VECTOR.body} `, vectorHeaders(), VECTOR.secret],
    ['timestamp', VECTOR.body, vectorHeaders({ 'webhook-timestamp': String(VECTOR.timestamp + 1) }), VECTOR.secret],
    ['id', VECTOR.body, vectorHeaders({ 'webhook-id': 'msg_other' }), VECTOR.secret],
    ['secret', VECTOR.body, vectorHeaders(), webhookSecret()],
    ['signature version', VECTOR.body, vectorHeaders({ 'webhook-signature': `v2,${VECTOR.signature.slice(3)}` }), VECTOR.secret],
    ['signature (not base64)', VECTOR.body, vectorHeaders({ 'webhook-signature': 'v1,not-base64!' }), VECTOR.secret],
  ];
  for (const [what, body, headers, secret] of tampered) {
    test(`another ${what} is refused`, () => {
      assert.throws(() => verifyWebhook(headers, body, secret, at), NoMatchingSignature);
    });
  }

  test('stale or future timestamps are refused', () => {
    assert.throws(() => verifyWebhook(vectorHeaders(), VECTOR.body, VECTOR.secret, { now: VECTOR.timestamp + 301 }),
      (e: unknown) => e instanceof TimestampOutOfTolerance && /more than the 300 s allowed/.test(e.message));
    assert.throws(() => verifyWebhook(vectorHeaders(), VECTOR.body, VECTOR.secret, { now: VECTOR.timestamp - 301 }),
      TimestampOutOfTolerance);
    verifyWebhook(vectorHeaders(), VECTOR.body, VECTOR.secret, { now: VECTOR.timestamp + 300 });
    verifyWebhook(vectorHeaders(), VECTOR.body, VECTOR.secret, { now: VECTOR.timestamp - 300 });
    verifyWebhook(vectorHeaders(), VECTOR.body, VECTOR.secret, { now: VECTOR.timestamp + 3000, toleranceSeconds: 3600 });
    // The real clock: the 2021 vector is long stale.
    assert.throws(() => verifyWebhook(vectorHeaders(), VECTOR.body, VECTOR.secret), TimestampOutOfTolerance);
    assert.throws(() => verifyWebhook(vectorHeaders({ 'webhook-timestamp': 'soon' }), VECTOR.body, VECTOR.secret),
      InvalidTimestamp);
  });

  test('missing headers are named', () => {
    for (const name of ['webhook-id', 'webhook-timestamp', 'webhook-signature']) {
      const headers = vectorHeaders();
      delete headers[name];
      assert.throws(() => verifyWebhook(headers, VECTOR.body, VECTOR.secret, at),
        (e: unknown) => e instanceof MissingHeader && e.header === name);
    }
  });

  test('rotation: two signatures, two secrets', () => {
    const fresh = webhookSecret();
    const both = `${sign(VECTOR.secret, VECTOR.id, VECTOR.timestamp, VECTOR.body)} ${sign(fresh, VECTOR.id, VECTOR.timestamp, VECTOR.body)}`;
    assert.equal(both.split(' ')[0], VECTOR.signature);
    const headers = vectorHeaders({ 'webhook-signature': both });
    // A receiver that knows only the new secret, or only the old one, accepts it.
    verifyWebhook(headers, VECTOR.body, fresh, at);
    verifyWebhook(headers, VECTOR.body, VECTOR.secret, at);
    // A receiver rotating its own secrets accepts a push signed with either.
    verifyWebhook(vectorHeaders(), VECTOR.body, [fresh, VECTOR.secret], at);
    assert.throws(() => verifyWebhook(vectorHeaders(), VECTOR.body, [fresh], at), NoMatchingSignature);
  });

  test('a malformed secret is a configuration error', () => {
    assert.throws(() => verifyWebhook(vectorHeaders(), VECTOR.body, 'whsec_not base64!', at), TypeError);
    assert.throws(() => verifyWebhook(vectorHeaders(), VECTOR.body, [], at), TypeError);
  });
});

describe('retries', () => {
  test('the wait is a jittered exponential backoff', () => {
    for (const [failed, base] of [[1, 50], [2, 100], [3, 200], [5, 800], [6, 1000], [12, 1000]]) {
      assert.equal(retryWaitMs(failed, undefined, 60_000, 0), base);
      assert.ok(Math.abs(retryWaitMs(failed, undefined, 60_000, 0.999)! - base * 1.999) < 1e-9);
    }
  });

  test("the wait honours the server's RetryInfo within the budget", () => {
    assert.equal(retryWaitMs(1, 400, 60_000, 0.5), 400);
    // A RetryInfo shorter than the backoff does not hurry the retry.
    assert.equal(retryWaitMs(3, 10, 60_000, 0), 200);
    // A quota's hour: the refusal now, not a useless wait.
    assert.equal(retryWaitMs(1, 3_600_000, 6000, 0), undefined);
    assert.equal(retryWaitMs(1, undefined, 50, 0), undefined);
    assert.equal(retryWaitMs(1, undefined, 51, 0), 50);
  });

  const shed = (retryAfterMs?: number) =>
    new Refused(grpc.status.RESOURCE_EXHAUSTED, 'RATE_LIMITED: shed', 'RATE_LIMITED', {}, retryAfterMs);

  /** An attempt that fails with `errors` one by one, then answers; when each started. */
  function flaky(...errors: VodSignerError[]): { attempt: () => Promise<string>; calls: number[] } {
    const calls: number[] = [];
    return {
      calls,
      attempt: async () => {
        calls.push(performance.now());
        const error = errors.shift();
        if (error) throw error;
        return 'answer';
      },
    };
  }

  test('a shed call waits its RetryInfo, then retries', async () => {
    const { attempt, calls } = flaky(shed(300));
    const seen: VodSignerError[] = [];
    const answer = await withRetries('VerifySignature', attempt, {
      attempts: 3, budgetMs: 6000, onRetry: (_rpc, _n, e) => seen.push(e),
    });
    assert.equal(answer, 'answer');
    assert.equal(calls.length, 2);
    assert.ok(calls[1] - calls[0] >= 299, `waited ${calls[1] - calls[0]} ms`);
    assert.ok(seen[0] instanceof Refused && seen[0].retryAfterMs === 300);
  });

  test('a RetryInfo past the budget ends the call at once', async () => {
    const { attempt, calls } = flaky(shed(3_600_000));
    const started = performance.now();
    await assert.rejects(withRetries('VerifySignature', attempt, { attempts: 3, budgetMs: 6000 }),
      (e: unknown) => e instanceof Refused && e.reason === 'RATE_LIMITED' && e.retryAfterMs === 3_600_000);
    assert.ok(performance.now() - started < 500);
    assert.equal(calls.length, 1);
  });

  test('RATE_LIMITED without RetryInfo is final; an unknown outcome is retried with backoff', async () => {
    const final = flaky(shed());
    await assert.rejects(withRetries('VerifySignature', final.attempt, { attempts: 3, budgetMs: 6000 }), Refused);
    assert.equal(final.calls.length, 1);
    const lost = flaky(new CallFailed(grpc.status.UNAVAILABLE, 'reset'), new CallFailed(grpc.status.UNAVAILABLE, 'reset'));
    assert.equal(await withRetries('VerifySignature', lost.attempt, { attempts: 3, budgetMs: 6000 }), 'answer');
    assert.equal(lost.calls.length, 3);
    assert.ok(lost.calls[2] - lost.calls[1] >= 99, 'the second wait is at least twice the first backoff');
  });
});

describe('against vod-signer', () => {
  let redis: Redis;
  let receiver: Receiver;
  let pushing: Signer;
  let pulling: Signer;
  const secret = webhookSecret();
  const dir = mkdtempSync(join(tmpdir(), 'vodsigner-node-notify-'));

  before(async () => {
    redis = await Redis.start();
    receiver = await Receiver.start();
    const secretFile = join(dir, 'notify-secret');
    writeFileSync(secretFile, `# rotated by hand\n${secret}\n`);
    pushing = await Signer.start(redis, undefined, ['--key-prefix', 'jspush:', '--notify-url', receiver.url,
      '--notify-secret-file', secretFile, '--completion-window', `${COMPLETION_WINDOW_SECONDS}s`]);
    pulling = await Signer.start(redis, undefined, ['--key-prefix', 'jspull:', '--notify-mode', 'pull']);
  });

  after(() => {
    pushing?.stop();
    pulling?.stop();
    receiver?.close();
    redis?.stop();
    rmSync(dir, { recursive: true, force: true });
    assert.deepEqual(pushing?.leaks(secret) ?? [], [], 'a secret or a whole signature leaked into the server log');
    assert.deepEqual(pulling?.leaks() ?? [], [], 'a secret or a whole signature leaked into the server log');
  });

  const bodyOf = (push: Push) => JSON.parse(push.body.toString());
  const client = (target: string, role: keyof typeof TOKENS) =>
    new Client(target, { token: TOKENS[role], timeoutMs: TIMEOUT_MS });

  test('a completed upload is pushed, signed', async () => {
    const app = client(pushing.target, 'app');
    const gateway = client(pushing.target, 'gateway');
    try {
      const { signature } = await app.issue('user-70', { policy: { source_context: 'user-70/upload-1', max_file_size: 1 << 20 } });
      await assert.rejects(gateway.completeUpload(signature, 'file-70', { fileSize: 1000 }),
        (e: unknown) => e instanceof Refused && e.reason === 'SIGNATURE_NOT_CONSUMED' && e.code === grpc.status.FAILED_PRECONDITION);
      await gateway.consume(signature, { fileSize: 1000, idempotencyKey: 'upload-70' });
      const args = { fileSize: 1000, mediaUrl: 'https://media.example/file-70.mp4', mediaType: 'mp4' };
      const done = await gateway.completeUpload(signature, 'file-70', args);
      assert.ok(done.completed_at > 0);
      // Safe to retry: the same arguments, the same success.
      assert.equal((await gateway.completeUpload(signature, 'file-70', args)).completed_at, done.completed_at);
      await assert.rejects(gateway.completeUpload(signature, 'file-71', args),
        (e: unknown) => e instanceof Refused && e.reason === 'UPLOAD_ALREADY_COMPLETED' && !e.retryable);
      assert.equal((await app.verify(signature)).state, SignatureState.COMPLETED);
    } finally {
      app.close();
      gateway.close();
    }

    const push = await receiver.waitFor((p) => bodyOf(p).FileUploadEvent.FileId === 'file-70', 20_000);
    assert.equal(push.path, '/hook');
    assert.equal(push.headers['content-type'], 'application/json');
    const payload = verifyWebhook(push.headers, push.body, secret) as Record<string, any>;
    assert.equal(payload.EventType, 'NewFileUpload');
    const event = payload.FileUploadEvent;
    assert.equal(event.FileId, 'file-70');
    assert.deepEqual(event.MediaBasicInfo.SourceInfo, { SourceType: 'Upload', SourceContext: 'user-70/upload-1' });
    assert.equal(event.MediaBasicInfo.MediaUrl, 'https://media.example/file-70.mp4');
    assert.equal(event.MediaBasicInfo.Type, 'mp4');
    assert.equal(event.MetaData.Size, 1000);
    assert.equal(payload.VodSigner.Subject, 'user-70');
    assert.match(String(push.headers['webhook-id']), /^msg_/);
    assert.throws(() => verifyWebhook(push.headers, push.body, webhookSecret()), NoMatchingSignature);
    const forged = Buffer.from(push.body.toString().replace('file-70', 'file-77'));
    assert.throws(() => verifyWebhook(push.headers, forged, secret), NoMatchingSignature);
  });

  test('an upload never completed is abandoned, and pushed', async () => {
    const admin = client(pushing.target, 'admin');
    try {
      const issued = await admin.issue('user-71', { policy: { source_context: 'user-71/upload-1' } });
      await admin.consume(issued.signature);
      const push = await receiver.waitFor((p) =>
        bodyOf(p).VodSigner.Random === issued.claims?.random && bodyOf(p).EventType === 'UploadAbandoned',
      (COMPLETION_WINDOW_SECONDS + 20) * 1000);
      const payload = verifyWebhook(push.headers, push.body, secret) as Record<string, any>;
      assert.equal(payload.FileUploadEvent.MediaBasicInfo.SourceInfo.SourceContext, 'user-71/upload-1');
      assert.equal((await admin.verify(issued.signature)).state, SignatureState.ABANDONED);
      // The upload outlived the window: a completion still succeeds, and says it is late.
      assert.equal((await admin.completeUpload(issued.signature, 'file-71-late', { fileSize: 5 })).late, true);
      assert.equal((await admin.verify(issued.signature)).state, SignatureState.COMPLETED);
    } finally {
      admin.close();
    }
  });

  test('pulled notifications are confirmed once', async () => {
    const app = client(pulling.target, 'app');
    const gateway = client(pulling.target, 'gateway');
    try {
      const { signature } = await app.issue('user-72', { policy: { source_context: 'user-72/upload-1' } });
      await gateway.consume(signature);
      await gateway.completeUpload(signature, 'file-72', { fileSize: 72, mediaType: 'mp4' });
      await assert.rejects(gateway.pullEvents(), (e: unknown) => e instanceof Refused && e.reason === 'PERMISSION_DENIED');

      let found: Awaited<ReturnType<Client['pullEvents']>> = [];
      const deadline = Date.now() + 20_000;
      while (found.length === 0 && Date.now() < deadline) {
        found = (await app.pullEvents({ waitSeconds: 2 }))
          .filter((n) => JSON.parse(n.body).FileUploadEvent.FileId === 'file-72');
      }
      assert.equal(found.length, 1, 'no notification pulled');
      const [note] = found;
      assert.match(note.webhook_id, /^msg_/);
      assert.ok(note.created_at > 0);
      assert.equal(JSON.parse(note.body).EventType, 'NewFileUpload');
      assert.equal(await app.confirmEvents([note.handle]), 1);
      // Idempotent: a retry of the confirm answers 0, and the notification is gone.
      assert.equal(await app.confirmEvents([note.handle]), 0);
      const later = await app.pullEvents({ waitSeconds: 1 });
      assert.ok(later.every((n) => n.handle !== note.handle));
    } finally {
      app.close();
      gateway.close();
    }
  });
});
