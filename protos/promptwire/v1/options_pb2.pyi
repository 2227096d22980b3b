from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrieMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIE_MODE_UNSPECIFIED: _ClassVar[TrieMode]
    TRIE_MODE_CANONICAL: _ClassVar[TrieMode]
    TRIE_MODE_ANY: _ClassVar[TrieMode]
TRIE_MODE_UNSPECIFIED: TrieMode
TRIE_MODE_CANONICAL: TrieMode
TRIE_MODE_ANY: TrieMode

class SamplingParams(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "seed", "stop", "n", "logprobs", "top_logprobs", "response_format", "presence_penalty", "frequency_penalty", "user", "extra_json")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    EXTRA_JSON_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    n: int
    logprobs: bool
    top_logprobs: int
    response_format: ResponseFormat
    presence_penalty: float
    frequency_penalty: float
    user: str
    extra_json: str
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., n: _Optional[int] = ..., logprobs: _Optional[bool] = ..., top_logprobs: _Optional[int] = ..., response_format: _Optional[_Union[ResponseFormat, _Mapping]] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., user: _Optional[str] = ..., extra_json: _Optional[str] = ...) -> None: ...

class ResponseFormat(_message.Message):
    __slots__ = ("text", "json_object", "json_schema")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    JSON_OBJECT_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    text: TextFormat
    json_object: JsonObjectFormat
    json_schema: JsonSchemaFormat
    def __init__(self, text: _Optional[_Union[TextFormat, _Mapping]] = ..., json_object: _Optional[_Union[JsonObjectFormat, _Mapping]] = ..., json_schema: _Optional[_Union[JsonSchemaFormat, _Mapping]] = ...) -> None: ...

class TextFormat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JsonObjectFormat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JsonSchemaFormat(_message.Message):
    __slots__ = ("name", "schema_json", "strict", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    schema_json: str
    strict: bool
    description: str
    def __init__(self, name: _Optional[str] = ..., schema_json: _Optional[str] = ..., strict: _Optional[bool] = ..., description: _Optional[str] = ...) -> None: ...

class Disabled(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StageOverrides(_message.Message):
    __slots__ = ("condense_history", "select_prompt", "conjugate", "compress")
    CONDENSE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    SELECT_PROMPT_FIELD_NUMBER: _ClassVar[int]
    CONJUGATE_FIELD_NUMBER: _ClassVar[int]
    COMPRESS_FIELD_NUMBER: _ClassVar[int]
    condense_history: CondenseHistoryStage
    select_prompt: SelectPromptStage
    conjugate: ConjugateStage
    compress: CompressStage
    def __init__(self, condense_history: _Optional[_Union[CondenseHistoryStage, _Mapping]] = ..., select_prompt: _Optional[_Union[SelectPromptStage, _Mapping]] = ..., conjugate: _Optional[_Union[ConjugateStage, _Mapping]] = ..., compress: _Optional[_Union[CompressStage, _Mapping]] = ...) -> None: ...

class CondenseHistoryStage(_message.Message):
    __slots__ = ("disabled", "options")
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    disabled: Disabled
    options: CondenseHistoryOptions
    def __init__(self, disabled: _Optional[_Union[Disabled, _Mapping]] = ..., options: _Optional[_Union[CondenseHistoryOptions, _Mapping]] = ...) -> None: ...

class SelectPromptStage(_message.Message):
    __slots__ = ("disabled", "options")
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    disabled: Disabled
    options: SelectPromptOptions
    def __init__(self, disabled: _Optional[_Union[Disabled, _Mapping]] = ..., options: _Optional[_Union[SelectPromptOptions, _Mapping]] = ...) -> None: ...

class ConjugateStage(_message.Message):
    __slots__ = ("disabled", "options")
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    disabled: Disabled
    options: ConjugateOptions
    def __init__(self, disabled: _Optional[_Union[Disabled, _Mapping]] = ..., options: _Optional[_Union[ConjugateOptions, _Mapping]] = ...) -> None: ...

class CompressStage(_message.Message):
    __slots__ = ("disabled", "options")
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    disabled: Disabled
    options: CompressStageOptions
    def __init__(self, disabled: _Optional[_Union[Disabled, _Mapping]] = ..., options: _Optional[_Union[CompressStageOptions, _Mapping]] = ...) -> None: ...

class CondenseHistoryOptions(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SelectPromptOptions(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConjugateOptions(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CompressStageOptions(_message.Message):
    __slots__ = ("rate", "target_token", "force_tokens", "roles", "protections", "force_reserve_digit", "drop_consecutive")
    RATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FORCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    PROTECTIONS_FIELD_NUMBER: _ClassVar[int]
    FORCE_RESERVE_DIGIT_FIELD_NUMBER: _ClassVar[int]
    DROP_CONSECUTIVE_FIELD_NUMBER: _ClassVar[int]
    rate: float
    target_token: int
    force_tokens: _containers.RepeatedScalarFieldContainer[str]
    roles: _containers.RepeatedScalarFieldContainer[str]
    protections: Protections
    force_reserve_digit: bool
    drop_consecutive: bool
    def __init__(self, rate: _Optional[float] = ..., target_token: _Optional[int] = ..., force_tokens: _Optional[_Iterable[str]] = ..., roles: _Optional[_Iterable[str]] = ..., protections: _Optional[_Union[Protections, _Mapping]] = ..., force_reserve_digit: _Optional[bool] = ..., drop_consecutive: _Optional[bool] = ...) -> None: ...

class Protections(_message.Message):
    __slots__ = ("code_blocks", "json", "urls", "identifiers", "numbers")
    CODE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    URLS_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    code_blocks: bool
    json: bool
    urls: bool
    identifiers: bool
    numbers: bool
    def __init__(self, code_blocks: _Optional[bool] = ..., json: _Optional[bool] = ..., urls: _Optional[bool] = ..., identifiers: _Optional[bool] = ..., numbers: _Optional[bool] = ...) -> None: ...

class DecoderOptions(_message.Message):
    __slots__ = ("trie", "uscd", "decog")
    TRIE_FIELD_NUMBER: _ClassVar[int]
    USCD_FIELD_NUMBER: _ClassVar[int]
    DECOG_FIELD_NUMBER: _ClassVar[int]
    trie: TrieDecoder
    uscd: UscdDecoder
    decog: DecogDecoder
    def __init__(self, trie: _Optional[_Union[TrieDecoder, _Mapping]] = ..., uscd: _Optional[_Union[UscdDecoder, _Mapping]] = ..., decog: _Optional[_Union[DecogDecoder, _Mapping]] = ...) -> None: ...

class TrieDecoder(_message.Message):
    __slots__ = ("labels", "separator", "max_labels", "mode", "scoring")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SEPARATOR_FIELD_NUMBER: _ClassVar[int]
    MAX_LABELS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SCORING_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    separator: str
    max_labels: int
    mode: TrieMode
    scoring: bool
    def __init__(self, labels: _Optional[_Iterable[str]] = ..., separator: _Optional[str] = ..., max_labels: _Optional[int] = ..., mode: _Optional[_Union[TrieMode, str]] = ..., scoring: _Optional[bool] = ...) -> None: ...

class UscdDecoder(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DecogDecoder(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
