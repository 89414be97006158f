// Refusal reasons (SPEC section 3) and the errors the client throws.
import * as grpc from '@grpc/grpc-js';
import * as protobuf from 'protobufjs';

/** The ErrorInfo domain of vod-signer's refusals. */
export const DOMAIN = 'vodsigner';

/** Every reason token: SPEC section 3, plus CALLER_UNAUTHENTICATED (the server's addition). */
export const REASONS = [
  'INVALID_REQUEST',
  'SIGNATURE_MALFORMED',
  'UNKNOWN_SECRET_ID',
  'SIGNATURE_MISMATCH',
  'SIGNATURE_EXPIRED',
  'SIGNATURE_NOT_YET_VALID',
  'SIGNATURE_ALREADY_USED',
  'SIGNATURE_REVOKED',
  'SIGNATURE_NOT_ISSUED',
  'FILE_TOO_LARGE',
  'RATE_LIMITED',
  'PERMISSION_DENIED',
  'NO_ACTIVE_KEY',
  'STORE_UNAVAILABLE',
  'STORE_FULL',
  'CALLER_UNAUTHENTICATED',
] as const;

/** Why vod-signer refused a call; UNRECOGNIZED for a token newer than this client. */
export type Reason = (typeof REASONS)[number] | 'UNRECOGNIZED';

/** A call that did not succeed. */
export class VodSignerError extends Error {
  constructor(
    /** The gRPC status code. */
    readonly code: grpc.status,
    /** The server's message (or the transport's). */
    readonly details: string,
  ) {
    super(`${grpc.status[code] ?? code}: ${details}`);
    this.name = new.target.name;
  }

  /** Whether the outcome is unknown or transient, so the same call may succeed later (a
   * consume only with the same idempotency key). */
  get retryable(): boolean {
    return false;
  }
}

/** vod-signer refused the call with a reason (its ErrorInfo, domain `vodsigner`). */
export class Refused extends VodSignerError {
  /** The reason (UNRECOGNIZED for a token this client does not know; see `token`). */
  readonly reason: Reason;

  constructor(
    code: grpc.status,
    details: string,
    /** The raw reason token, e.g. "SIGNATURE_ALREADY_USED". */
    readonly token: string,
    /** ErrorInfo metadata, e.g. { quota: "outstanding" } on RATE_LIMITED. */
    readonly metadata: Readonly<Record<string, string>>,
    /** Milliseconds after which a retry may succeed (RetryInfo, with quota refusals). */
    readonly retryAfterMs?: number,
  ) {
    super(code, details);
    this.reason = (REASONS as readonly string[]).includes(token)
      ? (token as Reason)
      : 'UNRECOGNIZED';
  }

  override get retryable(): boolean {
    return this.reason === 'STORE_UNAVAILABLE';
  }
}

/** No answer with a reason: transport failure, deadline, or a status without ErrorInfo. */
export class CallFailed extends VodSignerError {
  override get retryable(): boolean {
    // The server ends a call past its deadline with CANCELLED ("Timeout expired"), not
    // DEADLINE_EXCEEDED: its outcome is just as unknown (as in the Rust client).
    return (
      this.code === grpc.status.UNAVAILABLE ||
      this.code === grpc.status.DEADLINE_EXCEEDED ||
      this.code === grpc.status.CANCELLED
    );
  }
}

// The few google.rpc messages a refusal carries (field numbers as in googleapis'
// google/rpc/status.proto and error_details.proto; Any and Duration inlined under other
// names, which the wire format does not see).
const RPC_TYPES = protobuf.parse(
  `syntax = "proto3";
  package vodsigner_client.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
  message Duration { int64 seconds = 1; int32 nanos = 2; }
  message RetryInfo { Duration retry_delay = 1; }`,
  { keepCase: true },
).root;
const Status = RPC_TYPES.lookupType('vodsigner_client.rpc.Status');
const ErrorInfo = RPC_TYPES.lookupType('vodsigner_client.rpc.ErrorInfo');
const RetryInfo = RPC_TYPES.lookupType('vodsigner_client.rpc.RetryInfo');
const AS_OBJECT = { longs: Number, defaults: true } as const;

interface AnyObject { type_url: string; value: Uint8Array }
interface ErrorInfoObject { reason: string; domain: string; metadata: Record<string, string> }
interface RetryInfoObject { retry_delay?: { seconds: number; nanos: number } }

/** Types a failed call: `Refused` when its `grpc-status-details-bin` trailer holds a
 * `google.rpc.ErrorInfo` of domain `vodsigner`, else `CallFailed`. */
export function errorFromServiceError(error: Partial<grpc.ServiceError>): VodSignerError {
  const code = error.code ?? grpc.status.UNKNOWN;
  const details = error.details ?? error.message ?? '';
  const raw = error.metadata?.get('grpc-status-details-bin')?.[0];
  if (Buffer.isBuffer(raw)) {
    let status: { details: AnyObject[] } | undefined;
    try {
      status = Status.toObject(Status.decode(raw), AS_OBJECT) as { details: AnyObject[] };
    } catch {
      status = undefined; // a malformed trailer is not a refusal
    }
    let info: ErrorInfoObject | undefined;
    let retryAfterMs: number | undefined;
    for (const any of status?.details ?? []) {
      if (any.type_url.endsWith('/google.rpc.ErrorInfo')) {
        const candidate = ErrorInfo.toObject(ErrorInfo.decode(any.value), AS_OBJECT) as ErrorInfoObject;
        if (candidate.domain === DOMAIN && info === undefined) info = candidate;
      } else if (any.type_url.endsWith('/google.rpc.RetryInfo')) {
        const retry = RetryInfo.toObject(RetryInfo.decode(any.value), AS_OBJECT) as RetryInfoObject;
        if (retry.retry_delay) {
          retryAfterMs = retry.retry_delay.seconds * 1000 + retry.retry_delay.nanos / 1e6;
        }
      }
    }
    if (info) return new Refused(code, details, info.reason, info.metadata, retryAfterMs);
  }
  return new CallFailed(code, details);
}
