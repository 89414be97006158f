// Node.js client of vod-signer (SignatureService, package vodsigner.v1).
export { Client, retryWaitMs } from './client';
export type { CallOptions, ClientOptions, CompleteOptions, ConsumeOptions, IssueOptions, ListOptions, PullOptions, RetryHook, TlsOptions } from './client';
export { CallFailed, DOMAIN, errorFromServiceError, REASONS, Refused, VodSignerError } from './errors';
export type { Reason } from './errors';
export { SignatureState } from './generated/vodsigner/v1/SignatureState';
export {
  DEFAULT_TOLERANCE_SECONDS, InvalidTimestamp, MissingHeader, NoMatchingSignature, TimestampOutOfTolerance,
  verifyWebhook, WebhookVerificationError,
} from './webhooks';
export type { VerifyOptions, WebhookHeaders, WebhookSecret } from './webhooks';
export type { CompleteUploadResponse__Output as CompleteUploadResponse } from './generated/vodsigner/v1/CompleteUploadResponse';
export type { Notification__Output as Notification } from './generated/vodsigner/v1/Notification';
export type { Claims__Output as Claims } from './generated/vodsigner/v1/Claims';
export type { ConsumeSignatureResponse__Output as ConsumeSignatureResponse } from './generated/vodsigner/v1/ConsumeSignatureResponse';
export type { IssueSignatureResponse__Output as IssueSignatureResponse } from './generated/vodsigner/v1/IssueSignatureResponse';
export type { ListSignaturesResponse__Output as ListSignaturesResponse } from './generated/vodsigner/v1/ListSignaturesResponse';
export type { RevokeSubjectResponse__Output as RevokeSubjectResponse } from './generated/vodsigner/v1/RevokeSubjectResponse';
export type { SignatureSummary__Output as SignatureSummary } from './generated/vodsigner/v1/SignatureSummary';
export type { RevokeSignatureResponse__Output as RevokeSignatureResponse } from './generated/vodsigner/v1/RevokeSignatureResponse';
export type { UploadPolicy } from './generated/vodsigner/v1/UploadPolicy';
export type { VerifySignatureResponse__Output as VerifySignatureResponse } from './generated/vodsigner/v1/VerifySignatureResponse';
