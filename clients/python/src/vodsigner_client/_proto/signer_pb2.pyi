# Generated from proto/vodsigner/v1/signer.proto by clients/python/generate.py. DO NOT EDIT.
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignatureState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNATURE_STATE_UNSPECIFIED: _ClassVar[SignatureState]
    ISSUED: _ClassVar[SignatureState]
    CONSUMED: _ClassVar[SignatureState]
    REVOKED: _ClassVar[SignatureState]
    EXPIRED: _ClassVar[SignatureState]
    NOT_ISSUED: _ClassVar[SignatureState]
    COMPLETED: _ClassVar[SignatureState]
    ABANDONED: _ClassVar[SignatureState]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_ISSUED: _ClassVar[EventKind]
    EVENT_KIND_CONSUMED: _ClassVar[EventKind]
    EVENT_KIND_REVOKED: _ClassVar[EventKind]
    EVENT_KIND_CONSUME_REFUSED: _ClassVar[EventKind]
    EVENT_KIND_COMPLETED: _ClassVar[EventKind]
    EVENT_KIND_ABANDONED: _ClassVar[EventKind]
    EVENT_KIND_COMPLETE_REFUSED: _ClassVar[EventKind]
SIGNATURE_STATE_UNSPECIFIED: SignatureState
ISSUED: SignatureState
CONSUMED: SignatureState
REVOKED: SignatureState
EXPIRED: SignatureState
NOT_ISSUED: SignatureState
COMPLETED: SignatureState
ABANDONED: SignatureState
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_ISSUED: EventKind
EVENT_KIND_CONSUMED: EventKind
EVENT_KIND_REVOKED: EventKind
EVENT_KIND_CONSUME_REFUSED: EventKind
EVENT_KIND_COMPLETED: EventKind
EVENT_KIND_ABANDONED: EventKind
EVENT_KIND_COMPLETE_REFUSED: EventKind

class UploadPolicy(_message.Message):
    __slots__ = ("class_id", "procedure", "task_priority", "task_notify_mode", "source_context", "session_context", "vod_sub_app_id", "storage_region", "max_file_size")
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    PROCEDURE_FIELD_NUMBER: _ClassVar[int]
    TASK_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TASK_NOTIFY_MODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SESSION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    VOD_SUB_APP_ID_FIELD_NUMBER: _ClassVar[int]
    STORAGE_REGION_FIELD_NUMBER: _ClassVar[int]
    MAX_FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    class_id: int
    procedure: str
    task_priority: int
    task_notify_mode: str
    source_context: str
    session_context: str
    vod_sub_app_id: int
    storage_region: str
    max_file_size: int
    def __init__(self, class_id: _Optional[int] = ..., procedure: _Optional[str] = ..., task_priority: _Optional[int] = ..., task_notify_mode: _Optional[str] = ..., source_context: _Optional[str] = ..., session_context: _Optional[str] = ..., vod_sub_app_id: _Optional[int] = ..., storage_region: _Optional[str] = ..., max_file_size: _Optional[int] = ...) -> None: ...

class IssueSignatureRequest(_message.Message):
    __slots__ = ("secret_id", "ttl_seconds", "policy", "subject")
    SECRET_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    secret_id: str
    ttl_seconds: int
    policy: UploadPolicy
    subject: str
    def __init__(self, secret_id: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., policy: _Optional[_Union[UploadPolicy, _Mapping]] = ..., subject: _Optional[str] = ...) -> None: ...

class Claims(_message.Message):
    __slots__ = ("secret_id", "current_time_stamp", "expire_time", "random", "one_time_valid", "policy", "extra", "original")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SECRET_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_TIME_STAMP_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    RANDOM_FIELD_NUMBER: _ClassVar[int]
    ONE_TIME_VALID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    secret_id: str
    current_time_stamp: int
    expire_time: int
    random: int
    one_time_valid: bool
    policy: UploadPolicy
    extra: _containers.ScalarMap[str, str]
    original: str
    def __init__(self, secret_id: _Optional[str] = ..., current_time_stamp: _Optional[int] = ..., expire_time: _Optional[int] = ..., random: _Optional[int] = ..., one_time_valid: _Optional[bool] = ..., policy: _Optional[_Union[UploadPolicy, _Mapping]] = ..., extra: _Optional[_Mapping[str, str]] = ..., original: _Optional[str] = ...) -> None: ...

class IssueSignatureResponse(_message.Message):
    __slots__ = ("signature", "claims")
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    signature: str
    claims: Claims
    def __init__(self, signature: _Optional[str] = ..., claims: _Optional[_Union[Claims, _Mapping]] = ...) -> None: ...

class VerifySignatureRequest(_message.Message):
    __slots__ = ("signature",)
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signature: str
    def __init__(self, signature: _Optional[str] = ...) -> None: ...

class VerifySignatureResponse(_message.Message):
    __slots__ = ("state", "claims")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    state: SignatureState
    claims: Claims
    def __init__(self, state: _Optional[_Union[SignatureState, str]] = ..., claims: _Optional[_Union[Claims, _Mapping]] = ...) -> None: ...

class ConsumeSignatureRequest(_message.Message):
    __slots__ = ("signature", "file_size", "idempotency_key")
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    signature: str
    file_size: int
    idempotency_key: str
    def __init__(self, signature: _Optional[str] = ..., file_size: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class ConsumeSignatureResponse(_message.Message):
    __slots__ = ("claims", "consumed_at")
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_AT_FIELD_NUMBER: _ClassVar[int]
    claims: Claims
    consumed_at: int
    def __init__(self, claims: _Optional[_Union[Claims, _Mapping]] = ..., consumed_at: _Optional[int] = ...) -> None: ...

class RevokeSignatureRequest(_message.Message):
    __slots__ = ("signature",)
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signature: str
    def __init__(self, signature: _Optional[str] = ...) -> None: ...

class RevokeSignatureResponse(_message.Message):
    __slots__ = ("previous_state",)
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    previous_state: SignatureState
    def __init__(self, previous_state: _Optional[_Union[SignatureState, str]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("start_id", "kinds")
    START_ID_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    start_id: str
    kinds: _containers.RepeatedScalarFieldContainer[EventKind]
    def __init__(self, start_id: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[EventKind, str]]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("id", "kind", "secret_id", "random", "subject", "source_context", "reason", "time", "file_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SECRET_ID_FIELD_NUMBER: _ClassVar[int]
    RANDOM_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: EventKind
    secret_id: str
    random: int
    subject: str
    source_context: str
    reason: str
    time: int
    file_id: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[EventKind, str]] = ..., secret_id: _Optional[str] = ..., random: _Optional[int] = ..., subject: _Optional[str] = ..., source_context: _Optional[str] = ..., reason: _Optional[str] = ..., time: _Optional[int] = ..., file_id: _Optional[str] = ...) -> None: ...

class ListSignaturesRequest(_message.Message):
    __slots__ = ("subject", "states", "page_size", "page_token")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subject: str
    states: _containers.RepeatedScalarFieldContainer[SignatureState]
    page_size: int
    page_token: str
    def __init__(self, subject: _Optional[str] = ..., states: _Optional[_Iterable[_Union[SignatureState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSignaturesResponse(_message.Message):
    __slots__ = ("signatures", "next_page_token")
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    signatures: _containers.RepeatedCompositeFieldContainer[SignatureSummary]
    next_page_token: str
    def __init__(self, signatures: _Optional[_Iterable[_Union[SignatureSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SignatureSummary(_message.Message):
    __slots__ = ("secret_id", "random", "state", "issued_at", "changed_at", "expire_time", "source_context")
    SECRET_ID_FIELD_NUMBER: _ClassVar[int]
    RANDOM_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    secret_id: str
    random: int
    state: SignatureState
    issued_at: int
    changed_at: int
    expire_time: int
    source_context: str
    def __init__(self, secret_id: _Optional[str] = ..., random: _Optional[int] = ..., state: _Optional[_Union[SignatureState, str]] = ..., issued_at: _Optional[int] = ..., changed_at: _Optional[int] = ..., expire_time: _Optional[int] = ..., source_context: _Optional[str] = ...) -> None: ...

class RevokeSubjectRequest(_message.Message):
    __slots__ = ("subject",)
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    def __init__(self, subject: _Optional[str] = ...) -> None: ...

class RevokeSubjectResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: int
    def __init__(self, revoked: _Optional[int] = ...) -> None: ...

class CompleteUploadRequest(_message.Message):
    __slots__ = ("signature", "file_id", "file_size", "media_url", "media_type")
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_URL_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    signature: str
    file_id: str
    file_size: int
    media_url: str
    media_type: str
    def __init__(self, signature: _Optional[str] = ..., file_id: _Optional[str] = ..., file_size: _Optional[int] = ..., media_url: _Optional[str] = ..., media_type: _Optional[str] = ...) -> None: ...

class CompleteUploadResponse(_message.Message):
    __slots__ = ("claims", "completed_at", "late")
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    claims: Claims
    completed_at: int
    late: bool
    def __init__(self, claims: _Optional[_Union[Claims, _Mapping]] = ..., completed_at: _Optional[int] = ..., late: _Optional[bool] = ...) -> None: ...

class PullEventsRequest(_message.Message):
    __slots__ = ("max", "wait_seconds")
    MAX_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    max: int
    wait_seconds: int
    def __init__(self, max: _Optional[int] = ..., wait_seconds: _Optional[int] = ...) -> None: ...

class PullEventsResponse(_message.Message):
    __slots__ = ("notifications",)
    NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    notifications: _containers.RepeatedCompositeFieldContainer[Notification]
    def __init__(self, notifications: _Optional[_Iterable[_Union[Notification, _Mapping]]] = ...) -> None: ...

class Notification(_message.Message):
    __slots__ = ("handle", "webhook_id", "body", "created_at")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    handle: str
    webhook_id: str
    body: str
    created_at: int
    def __init__(self, handle: _Optional[str] = ..., webhook_id: _Optional[str] = ..., body: _Optional[str] = ..., created_at: _Optional[int] = ...) -> None: ...

class ConfirmEventsRequest(_message.Message):
    __slots__ = ("handles",)
    HANDLES_FIELD_NUMBER: _ClassVar[int]
    handles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, handles: _Optional[_Iterable[str]] = ...) -> None: ...

class ConfirmEventsResponse(_message.Message):
    __slots__ = ("confirmed",)
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    confirmed: int
    def __init__(self, confirmed: _Optional[int] = ...) -> None: ...
