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
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

import { errorFromServiceError, VodSignerError } from './errors';
import type { ProtoGrpcType } from './generated/signer';
import type { ConsumeSignatureRequest } from './generated/vodsigner/v1/ConsumeSignatureRequest';
import type { ConsumeSignatureResponse__Output } from './generated/vodsigner/v1/ConsumeSignatureResponse';
import type { IssueSignatureResponse__Output } from './generated/vodsigner/v1/IssueSignatureResponse';
import type { ListSignaturesRequest } from './generated/vodsigner/v1/ListSignaturesRequest';
import type { ListSignaturesResponse__Output } from './generated/vodsigner/v1/ListSignaturesResponse';
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

export interface ClientOptions {
  /** Sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** TLS: true for the system roots, or the certificates to use. Absent: plaintext. */
  tls?: boolean | TlsOptions;
  /** Deadline of each attempt, milliseconds (default 2000); the server sees `grpc-timeout`. */
  timeoutMs?: number;
  /** Most tries of a retryable call, the first included (default 3). */
  attempts?: number;
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

export interface ListOptions extends CallOptions {
  /** States to list (ISSUED, CONSUMED, REVOKED); empty or absent: ISSUED only. */
  states?: ListSignaturesRequest['states'];
  /** 0 or absent: 100; at most 1000. */
  pageSize?: number;
  /** The previous page's next_page_token; empty or absent: the first page. */
  pageToken?: string;
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
  onRetry?: RetryHook;
  readonly #stub: SignatureServiceClient;
  readonly #token?: string;

  constructor(target: string, options: ClientOptions = {}) {
    this.timeoutMs = options.timeoutMs ?? 2000;
    if (!(this.timeoutMs > 0)) throw new RangeError('timeoutMs must be positive');
    this.attempts = Math.max(1, options.attempts ?? 3);
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

  close(): void {
    this.#stub.close();
  }

  /** Never shows the token. */
  toJSON(): object {
    return { timeoutMs: this.timeoutMs, attempts: this.attempts, token: this.#token ? '<redacted>' : undefined };
  }

  async #call<Req, Res>(
    name: string,
    method: Unary<Req, Res>,
    request: Req,
    options: CallOptions,
    attempts = this.attempts,
  ): Promise<Res> {
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    let delayMs = 50;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#once(method, request, timeoutMs);
      } catch (error) {
        if (!(error instanceof VodSignerError) || !error.retryable || attempt >= attempts) throw error;
        this.onRetry?.(name, attempt, error);
      }
      // Exponential backoff with jitter, so replicas are not hit in lockstep.
      await new Promise((resolve) => setTimeout(resolve, delayMs * (0.5 + Math.random())));
      delayMs = Math.min(delayMs * 2, 1000);
    }
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
