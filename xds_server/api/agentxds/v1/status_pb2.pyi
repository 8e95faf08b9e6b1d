import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Nack(_message.Message):
    __slots__ = ("node_id", "type_url", "version", "error_message", "time")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    type_url: str
    version: str
    error_message: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, node_id: _Optional[str] = ..., type_url: _Optional[str] = ..., version: _Optional[str] = ..., error_message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TypeStatus(_message.Message):
    __slots__ = ("type_url", "sent_version", "sent_time", "acked_version", "acked_time", "last_nack")
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    SENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SENT_TIME_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_NACK_FIELD_NUMBER: _ClassVar[int]
    type_url: str
    sent_version: str
    sent_time: _timestamp_pb2.Timestamp
    acked_version: str
    acked_time: _timestamp_pb2.Timestamp
    last_nack: Nack
    def __init__(self, type_url: _Optional[str] = ..., sent_version: _Optional[str] = ..., sent_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., acked_version: _Optional[str] = ..., acked_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_nack: _Optional[_Union[Nack, _Mapping]] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "group", "connected", "connected_since", "types", "recent_nacks")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    RECENT_NACKS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    group: str
    connected: bool
    connected_since: _timestamp_pb2.Timestamp
    types: _containers.RepeatedCompositeFieldContainer[TypeStatus]
    recent_nacks: _containers.RepeatedCompositeFieldContainer[Nack]
    def __init__(self, node_id: _Optional[str] = ..., group: _Optional[str] = ..., connected: _Optional[bool] = ..., connected_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., types: _Optional[_Iterable[_Union[TypeStatus, _Mapping]]] = ..., recent_nacks: _Optional[_Iterable[_Union[Nack, _Mapping]]] = ...) -> None: ...

class GroupStatus(_message.Message):
    __slots__ = ("group", "snapshot_version", "updated_time")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_TIME_FIELD_NUMBER: _ClassVar[int]
    group: str
    snapshot_version: str
    updated_time: _timestamp_pb2.Timestamp
    def __init__(self, group: _Optional[str] = ..., snapshot_version: _Optional[str] = ..., updated_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("nodes", "groups", "policy_errors", "internal_errors", "policy_warnings")
    NODES_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    POLICY_ERRORS_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_ERRORS_FIELD_NUMBER: _ClassVar[int]
    POLICY_WARNINGS_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    groups: _containers.RepeatedCompositeFieldContainer[GroupStatus]
    policy_errors: _containers.RepeatedScalarFieldContainer[str]
    internal_errors: _containers.RepeatedScalarFieldContainer[str]
    policy_warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[GroupStatus, _Mapping]]] = ..., policy_errors: _Optional[_Iterable[str]] = ..., internal_errors: _Optional[_Iterable[str]] = ..., policy_warnings: _Optional[_Iterable[str]] = ...) -> None: ...
