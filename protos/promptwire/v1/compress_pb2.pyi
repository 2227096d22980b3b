from protos.promptwire.v1 import common_pb2 as _common_pb2
from protos.promptwire.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CompatMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPAT_MODE_UNSPECIFIED: _ClassVar[CompatMode]
    COMPAT_MODE_NONE: _ClassVar[CompatMode]
    COMPAT_MODE_LLMLINGUA: _ClassVar[CompatMode]

class TokenToWord(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKEN_TO_WORD_UNSPECIFIED: _ClassVar[TokenToWord]
    TOKEN_TO_WORD_MEAN: _ClassVar[TokenToWord]
    TOKEN_TO_WORD_FIRST: _ClassVar[TokenToWord]
COMPAT_MODE_UNSPECIFIED: CompatMode
COMPAT_MODE_NONE: CompatMode
COMPAT_MODE_LLMLINGUA: CompatMode
TOKEN_TO_WORD_UNSPECIFIED: TokenToWord
TOKEN_TO_WORD_MEAN: TokenToWord
TOKEN_TO_WORD_FIRST: TokenToWord

class TextList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[str]] = ...) -> None: ...

class ChatMessageList(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ...) -> None: ...

class CompressRequest(_message.Message):
    __slots__ = ("text", "contexts", "messages", "model", "rate", "target_token", "force_tokens", "force_reserve_digit", "drop_consecutive", "compat", "roles", "protections", "return_word_labels", "token_to_word", "chunk_end_tokens", "force_context_ids", "context_level_rate")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FORCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FORCE_RESERVE_DIGIT_FIELD_NUMBER: _ClassVar[int]
    DROP_CONSECUTIVE_FIELD_NUMBER: _ClassVar[int]
    COMPAT_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    PROTECTIONS_FIELD_NUMBER: _ClassVar[int]
    RETURN_WORD_LABELS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TO_WORD_FIELD_NUMBER: _ClassVar[int]
    CHUNK_END_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FORCE_CONTEXT_IDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LEVEL_RATE_FIELD_NUMBER: _ClassVar[int]
    text: str
    contexts: TextList
    messages: ChatMessageList
    model: str
    rate: float
    target_token: int
    force_tokens: _containers.RepeatedScalarFieldContainer[str]
    force_reserve_digit: bool
    drop_consecutive: bool
    compat: CompatMode
    roles: _containers.RepeatedScalarFieldContainer[str]
    protections: _options_pb2.Protections
    return_word_labels: bool
    token_to_word: TokenToWord
    chunk_end_tokens: _containers.RepeatedScalarFieldContainer[str]
    force_context_ids: _containers.RepeatedScalarFieldContainer[int]
    context_level_rate: float
    def __init__(self, text: _Optional[str] = ..., contexts: _Optional[_Union[TextList, _Mapping]] = ..., messages: _Optional[_Union[ChatMessageList, _Mapping]] = ..., model: _Optional[str] = ..., rate: _Optional[float] = ..., target_token: _Optional[int] = ..., force_tokens: _Optional[_Iterable[str]] = ..., force_reserve_digit: _Optional[bool] = ..., drop_consecutive: _Optional[bool] = ..., compat: _Optional[_Union[CompatMode, str]] = ..., roles: _Optional[_Iterable[str]] = ..., protections: _Optional[_Union[_options_pb2.Protections, _Mapping]] = ..., return_word_labels: _Optional[bool] = ..., token_to_word: _Optional[_Union[TokenToWord, str]] = ..., chunk_end_tokens: _Optional[_Iterable[str]] = ..., force_context_ids: _Optional[_Iterable[int]] = ..., context_level_rate: _Optional[float] = ...) -> None: ...

class WordLabel(_message.Message):
    __slots__ = ("word", "keep", "probability")
    WORD_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    word: str
    keep: bool
    probability: float
    def __init__(self, word: _Optional[str] = ..., keep: _Optional[bool] = ..., probability: _Optional[float] = ...) -> None: ...

class CompressResponse(_message.Message):
    __slots__ = ("compressed_text", "compressed_contexts", "messages", "origin_tokens", "compressed_tokens", "ratio", "word_labels", "ms", "model", "execution_provider")
    COMPRESSED_TEXT_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    WORD_LABELS_FIELD_NUMBER: _ClassVar[int]
    MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    compressed_text: str
    compressed_contexts: _containers.RepeatedScalarFieldContainer[str]
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    origin_tokens: int
    compressed_tokens: int
    ratio: float
    word_labels: _containers.RepeatedCompositeFieldContainer[WordLabel]
    ms: float
    model: str
    execution_provider: str
    def __init__(self, compressed_text: _Optional[str] = ..., compressed_contexts: _Optional[_Iterable[str]] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., origin_tokens: _Optional[int] = ..., compressed_tokens: _Optional[int] = ..., ratio: _Optional[float] = ..., word_labels: _Optional[_Iterable[_Union[WordLabel, _Mapping]]] = ..., ms: _Optional[float] = ..., model: _Optional[str] = ..., execution_provider: _Optional[str] = ...) -> None: ...
