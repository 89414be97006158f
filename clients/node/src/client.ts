// A thin typed client of vod-signer's SignatureService.
//
// What it adds to the generated client: refusals as `Refused` with a `Reason`, a deadline on
// every attempt, a bearer token, TLS, and retries only where a retry cannot do harm:
// - VerifySignature changes nothing: retried on transient failures.
// - RevokeSignature has the same effect however often it runs: retried (a retry after a lost
//   reply reports previous_state REVOKED instead of ISSUED).
// - ConsumeSignature is retried only with one idempotency key for all attempts (the caller's,
//   or one made up per call), so a retry after a lost reply gets the same success and
//   consumed_at, never a second use.
// - IssueSignature is never retried: each attempt mints a new signature and counts against
//   the subject's quotas; a failed issue leaves at most an unused record.
// - CompleteUpload is retried with the same arguments: the server answers a repeat with the
//   same file_id with the first call's success.
// - ConfirmEvents is idempotent: retried. PullEvents is retried too, which is harmless but not
//   free: what a lost reply carried stays pending and is handed out again after 30 s.
//
// A retry follows an unknown or transient outcome (STORE_UNAVAILABLE, UNAVAILABLE,
// DEADLINE_EXCEEDED, CANCELLED) or a RATE_LIMITED that carries google.rpc.RetryInfo (a quota,
// or the server shedding load). It waits for an exponential backoff with jitter and never less
// than the RetryInfo delay (`retryWaitMs`); a wait that would end past the call's budget ends
// the call with the refusal at once instead, so the caller sees `retryAfterMs`.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

import { errorFromServiceError, Refused, VodSignerError } from './errors';
import type { ProtoGrpcType } from './generated/signer';
import type { CompleteUploadRequest } from './generated/vodsigner/v1/CompleteUploadRequest';
import type { CompleteUploadResponse__Output } from './generated/vodsigner/v1/CompleteUploadResponse';
import type { ConfirmEventsResponse__Output } from './generated/vodsigner/v1/ConfirmEventsResponse';
import type { ConsumeSignatureRequest } from './generated/vodsigner/v1/ConsumeSignatureRequest';
import type { ConsumeSignatureResponse__Output } from './generated/vodsigner/v1/ConsumeSignatureResponse';
import type { IssueSignatureResponse__Output } from './generated/vodsigner/v1/IssueSignatureResponse';
import type { ListSignaturesRequest } from './generated/vodsigner/v1/ListSignaturesRequest';
import type { ListSignaturesResponse__Output } from './generated/vodsigner/v1/ListSignaturesResponse';
import type { Notification__Output } from './generated/vodsigner/v1/Notification';
import type { PullEventsResponse__Output } from './generated/vodsigner/v1/PullEventsResponse';
import type { RevokeSignatureResponse__Output } from './generated/vodsigner/v1/RevokeSignatureResponse';
import type { RevokeSubjectResponse__Output } from './generated/vodsigner/v1/RevokeSubjectResponse';
import type { SignatureServiceClient } from './generated/vodsigner/v1/SignatureService';
import type { UploadPolicy } from './generated/vodsigner/v1/UploadPolicy';
import type { VerifySignatureResponse__Output } from './generated/vodsigner/v1/VerifySignatureResponse';

// The options the types were generated with (package.json "generate"): proto field names,
// 64-bit integers as numbers (seconds and byte counts stay far below 2^53), enums as names.
const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [join(__dirname, '..', 'proto')],
};
const definition = grpc.loadPackageDefinition(
  protoLoader.loadSync('vodsigner/v1/signer.proto', LOADER_OPTIONS),
) as unknown as ProtoGrpcType;

/** TLS settings (PEM buffers). */
export interface TlsOptions {
  /** CA bundle that signs the server certificate; absent: the system roots. */
  rootCerts?: Buffer;
  /** Client certificate chain and key, for mTLS. */
  certChain?: Buffer;
  privateKey?: Buffer;
  /** The name the server certificate must carry, when it differs from the target's host. */
  serverName?: string;
}

/** Called before each retry with the RPC, the attempt that failed (1-based) and its error. */
export type RetryHook = (rpc: string, attempt: number, error: VodSignerError) => void;

/** The first retry's backoff before jitter, ms; doubled per retry up to MAX_BACKOFF_MS. */
export const FIRST_BACKOFF_MS = 50;
/** The longest backoff before jitter, ms (jitter adds up to as much again). */
export const MAX_BACKOFF_MS = 1000;

/** Milliseconds to wait before the next attempt, after `failedAttempts` failed ones: the
 * exponential backoff `d` (FIRST_BACKOFF_MS doubled per retry, at most MAX_BACKOFF_MS)
 * stretched by `jitter` in [0, 1) to `d * (1 + jitter)`, and never less than the server's
 * `retryAfterMs`. Undefined when that wait would not end within the call's `remainingMs`. */
export function retryWaitMs(
  failedAttempts: number,
  retryAfterMs: number | undefined,
  remainingMs: number,
  jitter: number,
): number | undefined {
  const backoff = Math.min(FIRST_BACKOFF_MS * 2 ** Math.max(0, failedAttempts - 1), MAX_BACKOFF_MS);
  const wait = Math.max(backoff * (1 + jitter), retryAfterMs ?? 0);
  return wait < remainingMs ? wait : undefined;
}

export interface ClientOptions {
  /** Sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** TLS: true for the system roots, or the certificates to use. Absent: plaintext. */
  tls?: boolean | TlsOptions;
  /** Deadline of each attempt, milliseconds (default 2000); the server sees `grpc-timeout`. */
  timeoutMs?: number;
  /** Most tries of a retryable call, the first included (default 3). */
  attempts?: number;
  /** The most one call may take, attempts and waits together, ms (default timeoutMs × attempts). */
  budgetMs?: number;
  onRetry?: RetryHook;
  /** Extra grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
}

export interface CallOptions {
  /** Deadline of each attempt of this call, milliseconds. */
  timeoutMs?: number;
}

export interface IssueOptions extends CallOptions {
  /** 0 or absent: the server's default TTL. */
  ttlSeconds?: number;
  /** Empty or absent: the active key. */
  secretId?: string;
  /** What the platform does with the upload (proto field names). */
  policy?: UploadPolicy;
}

export interface ConsumeOptions extends CallOptions {
  /** The upload's size in bytes; required when the signature carries max_file_size. */
  fileSize?: number;
  /** One key per upload attempt (e.g. its request id); absent: one made up for this call. */
  idempotencyKey?: string;
}

export interface CompleteOptions extends CallOptions {
  /** Bytes stored; above the signature's max_file_size: FILE_TOO_LARGE. */
  fileSize: number;
  /** Where the file can be fetched or played (at most 2048 bytes). */
  mediaUrl?: string;
  /** Its type, e.g. mp4 (at most 64 bytes). */
  mediaType?: string;
}

export interface PullOptions extends CallOptions {
  /** Most notifications to take; 0 or absent: 16, at most 16. */
  max?: number;
  /** Seconds the server waits for a first notification (at most 5); added to the deadline. */
  waitSeconds?: number;
}

export interface ListOptions extends CallOptions {
  /** States to list (ISSUED, CONSUMED, REVOKED); empty or absent: ISSUED only. */
  states?: ListSignaturesRequest['states'];
  /** 0 or absent: 100; at most 1000. */
  pageSize?: number;
  /** The previous page's next_page_token; empty or absent: the first page. */
  pageToken?: string;
}

/** How a call retries. */
export interface RetryPolicy {
  /** Most attempts, the first included. */
  attempts: number;
  /** The most the call may take, attempts and waits together, ms. */
  budgetMs: number;
  onRetry?: RetryHook;
}

/** Runs `attempt` until it succeeds, its error is not retryable, the attempts are used up, or
 * the next wait (`retryWaitMs`) would end past the budget; then rejects with the last error. */
export async function withRetries<T>(rpc: string, attempt: () => Promise<T>, policy: RetryPolicy): Promise<T> {
  const started = performance.now();
  for (let failed = 1; ; failed++) {
    let waitMs: number | undefined;
    try {
      return await attempt();
    } catch (error) {
      if (!(error instanceof VodSignerError) || !error.retryable || failed >= policy.attempts) throw error;
      const retryAfterMs = error instanceof Refused ? error.retryAfterMs : undefined;
      waitMs = retryWaitMs(failed, retryAfterMs, policy.budgetMs - (performance.now() - started), Math.random());
      if (waitMs === undefined) throw error;
      policy.onRetry?.(rpc, failed, error);
    }
    await new Promise((resolve) => setTimeout(resolve, waitMs));
  }
}

type Unary<Req, Res> = (
  request: Req,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: grpc.requestCallback<Res>,
) => grpc.ClientUnaryCall;

/** A connection to vod-signer (one HTTP/2 channel; share one per process). */
export class Client {
  readonly timeoutMs: number;
  readonly attempts: number;
  readonly budgetMs?: number;
  onRetry?: RetryHook;
  readonly #stub: SignatureServiceClient;
  readonly #token?: string;

  constructor(target: string, options: ClientOptions = {}) {
    this.timeoutMs = options.timeoutMs ?? 2000;
    if (!(this.timeoutMs > 0)) throw new RangeError('timeoutMs must be positive');
    this.attempts = Math.max(1, options.attempts ?? 3);
    this.budgetMs = options.budgetMs;
    this.onRetry = options.onRetry;
    this.#token = options.token;
    const channelOptions: grpc.ChannelOptions = { ...options.channelOptions };
    let credentials = grpc.credentials.createInsecure();
    if (options.tls) {
      const tls: TlsOptions = options.tls === true ? {} : options.tls;
      credentials = grpc.credentials.createSsl(
        tls.rootCerts ?? null,
        tls.privateKey ?? null,
        tls.certChain ?? null,
      );
      if (tls.serverName) channelOptions['grpc.ssl_target_name_override'] = tls.serverName;
    }
    this.#stub = new definition.vodsigner.v1.SignatureService(target, credentials, channelOptions);
  }

  /** IssueSignature for the end user `subject`; one attempt, never retried. */
  issue(subject: string, options: IssueOptions = {}): Promise<IssueSignatureResponse__Output> {
    const request = {
      subject,
      ttl_seconds: options.ttlSeconds ?? 0,
      secret_id: options.secretId ?? '',
      policy: options.policy ?? {},
    };
    return this.#call('IssueSignature', this.#stub.IssueSignature, request, options, 1);
  }

  /** VerifySignature: the signature's state and claims; read-only, so retried. */
  verify(signature: string, options: CallOptions = {}): Promise<VerifySignatureResponse__Output> {
    return this.#call('VerifySignature', this.#stub.VerifySignature, { signature }, options);
  }

  /** ConsumeSignature; every attempt carries the same idempotency key, so a retry after a
   * lost reply gets the same success and consumed_at. */
  consume(signature: string, options: ConsumeOptions = {}): Promise<ConsumeSignatureResponse__Output> {
    const request: ConsumeSignatureRequest = {
      signature,
      idempotency_key: options.idempotencyKey || `js-${randomBytes(16).toString('hex')}`,
    };
    if (options.fileSize !== undefined) request.file_size = options.fileSize;
    return this.#call('ConsumeSignature', this.#stub.ConsumeSignature, request, options);
  }

  /** RevokeSignature; idempotent in effect, so retried. */
  revoke(signature: string, options: CallOptions = {}): Promise<RevokeSignatureResponse__Output> {
    return this.#call('RevokeSignature', this.#stub.RevokeSignature, { signature }, options);
  }

  /** ListSignatures: one page of the subject's signatures, newest first; read-only, so retried. */
  listSignatures(subject: string, options: ListOptions = {}): Promise<ListSignaturesResponse__Output> {
    const request: ListSignaturesRequest = {
      subject,
      states: options.states ?? [],
      page_size: options.pageSize ?? 0,
      page_token: options.pageToken ?? '',
    };
    return this.#call('ListSignatures', this.#stub.ListSignatures, request, options);
  }

  /** RevokeSubject: revokes every ISSUED signature of the subject; idempotent in effect, so
   * retried (a retry's `revoked` counts only what it revoked itself). */
  revokeSubject(subject: string, options: CallOptions = {}): Promise<RevokeSubjectResponse__Output> {
    return this.#call('RevokeSubject', this.#stub.RevokeSubject, { subject }, options);
  }

  /** CompleteUpload, the gateway's call once the upload's file is stored (role consumer):
   * CONSUMED becomes COMPLETED and the app server's notification is queued. Retried with the
   * same arguments: a repeat with the same fileId gets the first call's success
   * (`completed_at`); another fileId is refused UPLOAD_ALREADY_COMPLETED. `late` says it came
   * after the upload was marked ABANDONED. */
  completeUpload(signature: string, fileId: string, options: CompleteOptions): Promise<CompleteUploadResponse__Output> {
    const request: CompleteUploadRequest = {
      signature,
      file_id: fileId,
      file_size: options.fileSize,
      media_url: options.mediaUrl ?? '',
      media_type: options.mediaType ?? '',
    };
    return this.#call('CompleteUpload', this.#stub.CompleteUpload, request, options);
  }

  /** PullEvents (`--notify-mode pull`; roles issuer, admin): notifications whose `body` is
   * what the push would POST (JSON) and `webhook_id` its stable id (deduplicate by it);
   * confirm each with confirmEvents once processed, or it is handed out again after 30 s.
   * Each attempt's deadline is timeoutMs plus the wait. Retried on transient failures:
   * harmless, since what a lost reply carried comes back after those 30 s. */
  async pullEvents(options: PullOptions = {}): Promise<Notification__Output[]> {
    const waitSeconds = options.waitSeconds ?? 0;
    const request = { max: options.max ?? 0, wait_seconds: waitSeconds };
    const timeoutMs = (options.timeoutMs ?? this.timeoutMs) + waitSeconds * 1000;
    const response: PullEventsResponse__Output = await this.#call(
      'PullEvents', this.#stub.PullEvents, request, { timeoutMs });
    return response.notifications;
  }

  /** ConfirmEvents: the pulled notifications with these handles are processed; answers how
   * many were still unconfirmed. Idempotent, so retried (a retry after a lost reply answers 0
   * for what the first attempt confirmed). */
  async confirmEvents(handles: Iterable<string>, options: CallOptions = {}): Promise<number> {
    const response: ConfirmEventsResponse__Output = await this.#call(
      'ConfirmEvents', this.#stub.ConfirmEvents, { handles: [...handles] }, options);
    return response.confirmed;
  }

  close(): void {
    this.#stub.close();
  }

  /** Never shows the token. */
  toJSON(): object {
    return {
      timeoutMs: this.timeoutMs,
      attempts: this.attempts,
      budgetMs: this.budgetMs,
      token: this.#token ? '<redacted>' : undefined,
    };
  }

  #call<Req, Res>(
    name: string,
    method: Unary<Req, Res>,
    request: Req,
    options: CallOptions,
    attempts = this.attempts,
  ): Promise<Res> {
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    return withRetries(name, () => this.#once(method, request, timeoutMs), {
      attempts,
      budgetMs: this.budgetMs ?? timeoutMs * attempts,
      onRetry: this.onRetry,
    });
  }

  #once<Req, Res>(method: Unary<Req, Res>, request: Req, timeoutMs: number): Promise<Res> {
    const metadata = new grpc.Metadata();
    // Per-call metadata rather than call credentials: those need TLS, and inside a mesh the
    // hop to vod-signer may be plaintext.
    if (this.#token) metadata.set('authorization', `Bearer ${this.#token}`);
    return new Promise((resolve, reject) => {
      method.call(this.#stub, request, metadata, { deadline: Date.now() + timeoutMs }, (error, response) => {
        if (error) reject(errorFromServiceError(error));
        else if (response === undefined) reject(errorFromServiceError({ code: grpc.status.INTERNAL, details: 'empty response' }));
        else resolve(response);
      });
    });
  }
}
