// Checks a push from vod-signer (`--notify-url`): Standard Webhooks signatures.
//
// vod-signer signs each POST with three headers: `webhook-id` (the same on every retry of one
// notification: deduplicate by it), `webhook-timestamp` (Unix seconds of this attempt) and
// `webhook-signature` (`v1,<base64 HMAC-SHA256(key, id + "." + timestamp + "." + body)>`, one
// per secret during a rotation, space-separated). A secret is written `whsec_<base64>` (the
// prefix is optional); the HMAC key is its decoded bytes.
import { createHmac, timingSafeEqual } from 'node:crypto';

/** Seconds a push's timestamp may be off the receiver's clock, as Standard Webhooks, Svix and
 * Stripe allow: an older push is refused as a replay. */
export const DEFAULT_TOLERANCE_SECONDS = 300;

/** The push is not provably from vod-signer, or not fresh: answer it 4xx, do not act on it. */
export class WebhookVerificationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** One of `webhook-id`, `webhook-timestamp`, `webhook-signature` is absent. */
export class MissingHeader extends WebhookVerificationError {
  constructor(readonly header: string) {
    super(`the push has no ${header} header`);
  }
}

/** `webhook-timestamp` is not Unix seconds. */
export class InvalidTimestamp extends WebhookVerificationError {}

/** `webhook-timestamp` is further from now than the tolerance: a replay, or a clock off. */
export class TimestampOutOfTolerance extends WebhookVerificationError {
  constructor(readonly timestamp: number, readonly now: number, readonly toleranceSeconds: number) {
    const skew = Math.round(timestamp - now);
    super(`webhook-timestamp ${timestamp} is ${skew > 0 ? '+' : ''}${skew} s from now, `
      + `more than the ${toleranceSeconds} s allowed`);
  }
}

/** No `v1` signature in `webhook-signature` is any of the secrets' over this body. */
export class NoMatchingSignature extends WebhookVerificationError {}

/** Request headers: Node's `IncomingHttpHeaders` (names lower-cased), a plain object with
 * names in any case, or a fetch `Headers`. */
export type WebhookHeaders =
  | Readonly<Record<string, string | readonly string[] | undefined>>
  | { get(name: string): string | null };

/** A webhook secret: `whsec_<base64>` text, or the raw key bytes. */
export type WebhookSecret = string | Uint8Array;

export interface VerifyOptions {
  /** Seconds the timestamp may be off `now` (default 300). */
  toleranceSeconds?: number;
  /** Unix seconds to check the timestamp against (default: the current time). */
  now?: number;
}

function keyOf(secret: WebhookSecret): Buffer {
  if (typeof secret !== 'string') return Buffer.from(secret);
  const encoded = secret.trim().replace(/^whsec_/, '');
  // Buffer.from(…, 'base64') skips what is not base64: check the text itself.
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(encoded) || encoded.length % 4 !== 0) {
    throw new TypeError('a webhook secret is `whsec_` and base64 (as in --notify-secret-file)');
  }
  return Buffer.from(encoded, 'base64');
}

function header(headers: WebhookHeaders, name: string): string {
  let value: string | readonly string[] | null | undefined;
  if (typeof headers.get === 'function') {
    value = (headers as { get(name: string): string | null }).get(name);
  } else {
    const record = headers as Readonly<Record<string, string | readonly string[] | undefined>>;
    // Header names are case-insensitive; a plain object may hold them in any case.
    value = record[name] ?? Object.entries(record).find(([k]) => k.toLowerCase() === name)?.[1];
  }
  if (Array.isArray(value)) value = value[0];
  if (typeof value !== 'string') throw new MissingHeader(name);
  return value;
}

/** Checks a push and answers its body, parsed (JSON: Tencent VOD's `NewFileUpload` event
 * shape, or `UploadAbandoned`).
 *
 * `body` is the raw body received, before any parsing (a string is taken as its UTF-8 bytes;
 * never pass `JSON.stringify` of a parsed body). `secrets`: one secret, or several while the
 * sender rotates (any one matching passes). Signatures are compared in constant time
 * (`crypto.timingSafeEqual`). Throws a `WebhookVerificationError` that says why. */
export function verifyWebhook(
  headers: WebhookHeaders,
  body: string | Uint8Array,
  secrets: WebhookSecret | readonly WebhookSecret[],
  options: VerifyOptions = {},
): unknown {
  const id = header(headers, 'webhook-id');
  const stamp = header(headers, 'webhook-timestamp');
  const signatures = header(headers, 'webhook-signature');
  if (!/^\s*\d+\s*$/.test(stamp)) {
    throw new InvalidTimestamp(`webhook-timestamp ${JSON.stringify(stamp.slice(0, 32))} is not Unix seconds`);
  }
  const timestamp = Number(stamp);
  const tolerance = options.toleranceSeconds ?? DEFAULT_TOLERANCE_SECONDS;
  const now = options.now ?? Date.now() / 1000;
  if (Math.abs(timestamp - now) > tolerance) throw new TimestampOutOfTolerance(timestamp, now, tolerance);
  const raw = typeof body === 'string' ? Buffer.from(body, 'utf8') : Buffer.from(body);
  const list = typeof secrets === 'string' || secrets instanceof Uint8Array ? [secrets] : [...secrets];
  if (list.length === 0) throw new TypeError('no webhook secret given');
  const expected = list.map((secret) =>
    createHmac('sha256', keyOf(secret)).update(`${id}.${timestamp}.`).update(raw).digest());
  for (const entry of signatures.split(' ')) {
    const comma = entry.indexOf(',');
    if (comma < 0 || entry.slice(0, comma) !== 'v1') continue;
    const encoded = entry.slice(comma + 1);
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(encoded)) continue;
    const sent = Buffer.from(encoded, 'base64');
    // timingSafeEqual needs equal lengths; a length says nothing about the key. Every expected
    // tag is compared, so the time taken does not say which one matched.
    const matches = expected.map((tag) => tag.length === sent.length && timingSafeEqual(tag, sent));
    if (matches.includes(true)) return JSON.parse(raw.toString('utf8'));
  }
  throw new NoMatchingSignature('no webhook-signature matches the body with the given secrets');
}
