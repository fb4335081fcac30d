import datetime

from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TelemetryLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TELEMETRY_LEVEL_UNSPECIFIED: _ClassVar[TelemetryLevel]
    TELEMETRY_DEBUG: _ClassVar[TelemetryLevel]
    TELEMETRY_INFO: _ClassVar[TelemetryLevel]
    TELEMETRY_WARN: _ClassVar[TelemetryLevel]
    TELEMETRY_ERROR: _ClassVar[TelemetryLevel]
    TELEMETRY_CRITICAL: _ClassVar[TelemetryLevel]

class MetricType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_TYPE_UNSPECIFIED: _ClassVar[MetricType]
    METRIC_GAUGE: _ClassVar[MetricType]
    METRIC_COUNTER: _ClassVar[MetricType]
    METRIC_HISTOGRAM: _ClassVar[MetricType]

class CircuitState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CIRCUIT_STATE_UNSPECIFIED: _ClassVar[CircuitState]
    CIRCUIT_CLOSED: _ClassVar[CircuitState]
    CIRCUIT_OPEN: _ClassVar[CircuitState]
    CIRCUIT_HALF_OPEN: _ClassVar[CircuitState]
    CIRCUIT_FORCED_OPEN: _ClassVar[CircuitState]
    CIRCUIT_DISABLED: _ClassVar[CircuitState]
    CIRCUIT_METRICS_ONLY: _ClassVar[CircuitState]

class SeedStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEED_STAGE_UNSPECIFIED: _ClassVar[SeedStage]
    SEED_DORMANT: _ClassVar[SeedStage]
    SEED_GERMINATED: _ClassVar[SeedStage]
    SEED_TRAINING: _ClassVar[SeedStage]
    SEED_BLENDING: _ClassVar[SeedStage]
    SEED_SHADOWING: _ClassVar[SeedStage]
    SEED_PROBATIONARY: _ClassVar[SeedStage]
    SEED_FOSSILIZED: _ClassVar[SeedStage]
    SEED_CULLED: _ClassVar[SeedStage]
    SEED_EMBARGOED: _ClassVar[SeedStage]
    SEED_RESETTING: _ClassVar[SeedStage]
    SEED_TERMINATED: _ClassVar[SeedStage]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_BOOL: _ClassVar[DType]

class CompilationStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[CompilationStrategy]
    STRATEGY_EMERGENCY: _ClassVar[CompilationStrategy]
    STRATEGY_FAST: _ClassVar[CompilationStrategy]
    STRATEGY_STANDARD: _ClassVar[CompilationStrategy]
    STRATEGY_AGGRESSIVE: _ClassVar[CompilationStrategy]

class FailureReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_REASON_UNSPECIFIED: _ClassVar[FailureReason]
    FAILURE_VALIDATION: _ClassVar[FailureReason]
    FAILURE_TIMEOUT: _ClassVar[FailureReason]
    FAILURE_COMPILER_ERROR: _ClassVar[FailureReason]
    FAILURE_SANDBOX_CRASH: _ClassVar[FailureReason]
    FAILURE_RESOURCE_LIMIT: _ClassVar[FailureReason]
    FAILURE_CIRCUIT_OPEN: _ClassVar[FailureReason]
    FAILURE_UNAUTHORIZED: _ClassVar[FailureReason]
    FAILURE_STORE_ERROR: _ClassVar[FailureReason]
    FAILURE_DECODE: _ClassVar[FailureReason]
    FAILURE_CANCELLED: _ClassVar[FailureReason]

class CacheLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_LEVEL_UNSPECIFIED: _ClassVar[CacheLevel]
    CACHE_MISS: _ClassVar[CacheLevel]
    CACHE_L1: _ClassVar[CacheLevel]
    CACHE_L2: _ClassVar[CacheLevel]
    CACHE_L3: _ClassVar[CacheLevel]

class QuotaOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUOTA_OUTCOME_UNSPECIFIED: _ClassVar[QuotaOutcome]
    QUOTA_FULL: _ClassVar[QuotaOutcome]
    QUOTA_PARTIAL: _ClassVar[QuotaOutcome]
    QUOTA_DENIED: _ClassVar[QuotaOutcome]

class PauseAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAUSE_ACTION_UNSPECIFIED: _ClassVar[PauseAction]
    PAUSE_ENTER: _ClassVar[PauseAction]
    PAUSE_EXIT: _ClassVar[PauseAction]

class RequestKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUEST_KIND_UNSPECIFIED: _ClassVar[RequestKind]
    REQUEST_BLUEPRINT: _ClassVar[RequestKind]
    REQUEST_COMPILATION: _ClassVar[RequestKind]
    REQUEST_EMERGENCY: _ClassVar[RequestKind]
TELEMETRY_LEVEL_UNSPECIFIED: TelemetryLevel
TELEMETRY_DEBUG: TelemetryLevel
TELEMETRY_INFO: TelemetryLevel
TELEMETRY_WARN: TelemetryLevel
TELEMETRY_ERROR: TelemetryLevel
TELEMETRY_CRITICAL: TelemetryLevel
METRIC_TYPE_UNSPECIFIED: MetricType
METRIC_GAUGE: MetricType
METRIC_COUNTER: MetricType
METRIC_HISTOGRAM: MetricType
CIRCUIT_STATE_UNSPECIFIED: CircuitState
CIRCUIT_CLOSED: CircuitState
CIRCUIT_OPEN: CircuitState
CIRCUIT_HALF_OPEN: CircuitState
CIRCUIT_FORCED_OPEN: CircuitState
CIRCUIT_DISABLED: CircuitState
CIRCUIT_METRICS_ONLY: CircuitState
SEED_STAGE_UNSPECIFIED: SeedStage
SEED_DORMANT: SeedStage
SEED_GERMINATED: SeedStage
SEED_TRAINING: SeedStage
SEED_BLENDING: SeedStage
SEED_SHADOWING: SeedStage
SEED_PROBATIONARY: SeedStage
SEED_FOSSILIZED: SeedStage
SEED_CULLED: SeedStage
SEED_EMBARGOED: SeedStage
SEED_RESETTING: SeedStage
SEED_TERMINATED: SeedStage
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_BFLOAT16: DType
DTYPE_FLOAT64: DType
DTYPE_INT64: DType
DTYPE_INT32: DType
DTYPE_BOOL: DType
STRATEGY_UNSPECIFIED: CompilationStrategy
STRATEGY_EMERGENCY: CompilationStrategy
STRATEGY_FAST: CompilationStrategy
STRATEGY_STANDARD: CompilationStrategy
STRATEGY_AGGRESSIVE: CompilationStrategy
FAILURE_REASON_UNSPECIFIED: FailureReason
FAILURE_VALIDATION: FailureReason
FAILURE_TIMEOUT: FailureReason
FAILURE_COMPILER_ERROR: FailureReason
FAILURE_SANDBOX_CRASH: FailureReason
FAILURE_RESOURCE_LIMIT: FailureReason
FAILURE_CIRCUIT_OPEN: FailureReason
FAILURE_UNAUTHORIZED: FailureReason
FAILURE_STORE_ERROR: FailureReason
FAILURE_DECODE: FailureReason
FAILURE_CANCELLED: FailureReason
CACHE_LEVEL_UNSPECIFIED: CacheLevel
CACHE_MISS: CacheLevel
CACHE_L1: CacheLevel
CACHE_L2: CacheLevel
CACHE_L3: CacheLevel
QUOTA_OUTCOME_UNSPECIFIED: QuotaOutcome
QUOTA_FULL: QuotaOutcome
QUOTA_PARTIAL: QuotaOutcome
QUOTA_DENIED: QuotaOutcome
PAUSE_ACTION_UNSPECIFIED: PauseAction
PAUSE_ENTER: PauseAction
PAUSE_EXIT: PauseAction
REQUEST_KIND_UNSPECIFIED: RequestKind
REQUEST_BLUEPRINT: RequestKind
REQUEST_COMPILATION: RequestKind
REQUEST_EMERGENCY: RequestKind
SECRET_FIELD_NUMBER: _ClassVar[int]
secret: _descriptor.FieldDescriptor

class KeyValue(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class IntList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class FloatList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class TelemetryEvent(_message.Message):
    __slots__ = ("event_name", "severity", "message", "timestamp", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_NAME_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    event_name: str
    severity: TelemetryLevel
    message: str
    timestamp: _timestamp_pb2.Timestamp
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, event_name: _Optional[str] = ..., severity: _Optional[_Union[TelemetryLevel, str]] = ..., message: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class MetricPoint(_message.Message):
    __slots__ = ("name", "value", "type", "unit", "timestamp", "labels", "bucket_bounds", "bucket_counts", "count", "sum")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_COUNTS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    type: MetricType
    unit: str
    timestamp: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    bucket_bounds: _containers.RepeatedScalarFieldContainer[float]
    bucket_counts: _containers.RepeatedScalarFieldContainer[int]
    count: int
    sum: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., type: _Optional[_Union[MetricType, str]] = ..., unit: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., bucket_bounds: _Optional[_Iterable[float]] = ..., bucket_counts: _Optional[_Iterable[int]] = ..., count: _Optional[int] = ..., sum: _Optional[float] = ...) -> None: ...

class TelemetryPacket(_message.Message):
    __slots__ = ("packet_id", "timestamp", "source_subsystem", "source_id", "level", "events", "metrics")
    PACKET_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SUBSYSTEM_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    packet_id: str
    timestamp: _timestamp_pb2.Timestamp
    source_subsystem: str
    source_id: str
    level: TelemetryLevel
    events: _containers.RepeatedCompositeFieldContainer[TelemetryEvent]
    metrics: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    def __init__(self, packet_id: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source_subsystem: _Optional[str] = ..., source_id: _Optional[str] = ..., level: _Optional[_Union[TelemetryLevel, str]] = ..., events: _Optional[_Iterable[_Union[TelemetryEvent, _Mapping]]] = ..., metrics: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ...) -> None: ...

class BreakerStats(_message.Message):
    __slots__ = ("name", "state", "total_calls", "total_successes", "total_failures", "current_failure_count", "current_success_count", "success_rate", "state_transition_count", "last_failure_time_ms", "total_rejected", "failure_rate", "slow_call_rate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FAILURES_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FAILURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SUCCESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    STATE_TRANSITION_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REJECTED_FIELD_NUMBER: _ClassVar[int]
    FAILURE_RATE_FIELD_NUMBER: _ClassVar[int]
    SLOW_CALL_RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: CircuitState
    total_calls: int
    total_successes: int
    total_failures: int
    current_failure_count: int
    current_success_count: int
    success_rate: float
    state_transition_count: int
    last_failure_time_ms: int
    total_rejected: int
    failure_rate: float
    slow_call_rate: float
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[CircuitState, str]] = ..., total_calls: _Optional[int] = ..., total_successes: _Optional[int] = ..., total_failures: _Optional[int] = ..., current_failure_count: _Optional[int] = ..., current_success_count: _Optional[int] = ..., success_rate: _Optional[float] = ..., state_transition_count: _Optional[int] = ..., last_failure_time_ms: _Optional[int] = ..., total_rejected: _Optional[int] = ..., failure_rate: _Optional[float] = ..., slow_call_rate: _Optional[float] = ...) -> None: ...

class BreakerFailure(_message.Message):
    __slots__ = ("stats", "error_type", "error", "duration_ms")
    STATS_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    stats: BreakerStats
    error_type: str
    error: str
    duration_ms: float
    def __init__(self, stats: _Optional[_Union[BreakerStats, _Mapping]] = ..., error_type: _Optional[str] = ..., error: _Optional[str] = ..., duration_ms: _Optional[float] = ...) -> None: ...

class BreakerTransition(_message.Message):
    __slots__ = ("stats", "from_state", "to_state", "reason")
    STATS_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    stats: BreakerStats
    from_state: CircuitState
    to_state: CircuitState
    reason: str
    def __init__(self, stats: _Optional[_Union[BreakerStats, _Mapping]] = ..., from_state: _Optional[_Union[CircuitState, str]] = ..., to_state: _Optional[_Union[CircuitState, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ConservativeModeChanged(_message.Message):
    __slots__ = ("service", "active", "reasons", "cooldown_ms")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_MS_FIELD_NUMBER: _ClassVar[int]
    service: str
    active: bool
    reasons: _containers.RepeatedScalarFieldContainer[str]
    cooldown_ms: int
    def __init__(self, service: _Optional[str] = ..., active: _Optional[bool] = ..., reasons: _Optional[_Iterable[str]] = ..., cooldown_ms: _Optional[int] = ...) -> None: ...

class TimingViolation(_message.Message):
    __slots__ = ("operation", "actual_ms", "constraint_ms", "adjusted_constraint_ms", "timing_multiplier")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_MS_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINT_MS_FIELD_NUMBER: _ClassVar[int]
    ADJUSTED_CONSTRAINT_MS_FIELD_NUMBER: _ClassVar[int]
    TIMING_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    operation: str
    actual_ms: float
    constraint_ms: float
    adjusted_constraint_ms: float
    timing_multiplier: float
    def __init__(self, operation: _Optional[str] = ..., actual_ms: _Optional[float] = ..., constraint_ms: _Optional[float] = ..., adjusted_constraint_ms: _Optional[float] = ..., timing_multiplier: _Optional[float] = ...) -> None: ...

class HardwareProfile(_message.Message):
    __slots__ = ("cpu_architecture", "gpu_architecture", "device_name", "timing_multiplier", "epoch_boundary_ms", "gpu_kernel_launch_overhead_ms", "pcie_transfer_latency_ms", "memory_allocation_overhead_ms", "checkpoint_forward_overhead_ms", "teacher_loading_timeout_ms", "checkpoint_recompilation_timeout_ms")
    CPU_ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    GPU_ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    TIMING_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_BOUNDARY_MS_FIELD_NUMBER: _ClassVar[int]
    GPU_KERNEL_LAUNCH_OVERHEAD_MS_FIELD_NUMBER: _ClassVar[int]
    PCIE_TRANSFER_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ALLOCATION_OVERHEAD_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FORWARD_OVERHEAD_MS_FIELD_NUMBER: _ClassVar[int]
    TEACHER_LOADING_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_RECOMPILATION_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    cpu_architecture: str
    gpu_architecture: str
    device_name: str
    timing_multiplier: float
    epoch_boundary_ms: int
    gpu_kernel_launch_overhead_ms: float
    pcie_transfer_latency_ms: float
    memory_allocation_overhead_ms: float
    checkpoint_forward_overhead_ms: float
    teacher_loading_timeout_ms: int
    checkpoint_recompilation_timeout_ms: int
    def __init__(self, cpu_architecture: _Optional[str] = ..., gpu_architecture: _Optional[str] = ..., device_name: _Optional[str] = ..., timing_multiplier: _Optional[float] = ..., epoch_boundary_ms: _Optional[int] = ..., gpu_kernel_launch_overhead_ms: _Optional[float] = ..., pcie_transfer_latency_ms: _Optional[float] = ..., memory_allocation_overhead_ms: _Optional[float] = ..., checkpoint_forward_overhead_ms: _Optional[float] = ..., teacher_loading_timeout_ms: _Optional[int] = ..., checkpoint_recompilation_timeout_ms: _Optional[int] = ...) -> None: ...

class TeacherLoadingTimeout(_message.Message):
    __slots__ = ("actual_ms", "timeout_ms")
    ACTUAL_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    actual_ms: float
    timeout_ms: float
    def __init__(self, actual_ms: _Optional[float] = ..., timeout_ms: _Optional[float] = ...) -> None: ...

class PauseEntered(_message.Message):
    __slots__ = ("instance_id", "slot_id", "reason", "quota_ms", "identity_kernel_active", "max_duration_ms", "command_id")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    QUOTA_MS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_KERNEL_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    slot_id: str
    reason: str
    quota_ms: int
    identity_kernel_active: bool
    max_duration_ms: int
    command_id: str
    def __init__(self, instance_id: _Optional[str] = ..., slot_id: _Optional[str] = ..., reason: _Optional[str] = ..., quota_ms: _Optional[int] = ..., identity_kernel_active: _Optional[bool] = ..., max_duration_ms: _Optional[int] = ..., command_id: _Optional[str] = ...) -> None: ...

class PauseExited(_message.Message):
    __slots__ = ("instance_id", "slot_id", "duration_ms", "cause", "command_id")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_ID_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    slot_id: str
    duration_ms: int
    cause: str
    command_id: str
    def __init__(self, instance_id: _Optional[str] = ..., slot_id: _Optional[str] = ..., duration_ms: _Optional[int] = ..., cause: _Optional[str] = ..., command_id: _Optional[str] = ...) -> None: ...

class QuotaDecision(_message.Message):
    __slots__ = ("outcome", "requested", "granted", "used", "remaining", "max_quota")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    MAX_QUOTA_FIELD_NUMBER: _ClassVar[int]
    outcome: QuotaOutcome
    requested: int
    granted: int
    used: int
    remaining: int
    max_quota: int
    def __init__(self, outcome: _Optional[_Union[QuotaOutcome, str]] = ..., requested: _Optional[int] = ..., granted: _Optional[int] = ..., used: _Optional[int] = ..., remaining: _Optional[int] = ..., max_quota: _Optional[int] = ...) -> None: ...

class QuotaReset(_message.Message):
    __slots__ = ("previous_used", "max_quota", "interval_ms")
    PREVIOUS_USED_FIELD_NUMBER: _ClassVar[int]
    MAX_QUOTA_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    previous_used: int
    max_quota: int
    interval_ms: int
    def __init__(self, previous_used: _Optional[int] = ..., max_quota: _Optional[int] = ..., interval_ms: _Optional[int] = ...) -> None: ...

class CheckpointRecompilation(_message.Message):
    __slots__ = ("recompilation_count", "max_allowed", "reason", "fell_back_to_eager")
    RECOMPILATION_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FELL_BACK_TO_EAGER_FIELD_NUMBER: _ClassVar[int]
    recompilation_count: int
    max_allowed: int
    reason: str
    fell_back_to_eager: bool
    def __init__(self, recompilation_count: _Optional[int] = ..., max_allowed: _Optional[int] = ..., reason: _Optional[str] = ..., fell_back_to_eager: _Optional[bool] = ...) -> None: ...

class CheckpointOverhead(_message.Message):
    __slots__ = ("overhead_ratio", "acceptable_ratio", "base_ms", "checkpoint_ms", "critical")
    OVERHEAD_RATIO_FIELD_NUMBER: _ClassVar[int]
    ACCEPTABLE_RATIO_FIELD_NUMBER: _ClassVar[int]
    BASE_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_MS_FIELD_NUMBER: _ClassVar[int]
    CRITICAL_FIELD_NUMBER: _ClassVar[int]
    overhead_ratio: float
    acceptable_ratio: float
    base_ms: float
    checkpoint_ms: float
    critical: bool
    def __init__(self, overhead_ratio: _Optional[float] = ..., acceptable_ratio: _Optional[float] = ..., base_ms: _Optional[float] = ..., checkpoint_ms: _Optional[float] = ..., critical: _Optional[bool] = ...) -> None: ...

class TeacherMemory(_message.Message):
    __slots__ = ("current_usage_gb", "limit_gb", "usage_ratio", "exceeded", "source")
    CURRENT_USAGE_GB_FIELD_NUMBER: _ClassVar[int]
    LIMIT_GB_FIELD_NUMBER: _ClassVar[int]
    USAGE_RATIO_FIELD_NUMBER: _ClassVar[int]
    EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    current_usage_gb: float
    limit_gb: float
    usage_ratio: float
    exceeded: bool
    source: str
    def __init__(self, current_usage_gb: _Optional[float] = ..., limit_gb: _Optional[float] = ..., usage_ratio: _Optional[float] = ..., exceeded: _Optional[bool] = ..., source: _Optional[str] = ...) -> None: ...

class CheckpointFallback(_message.Message):
    __slots__ = ("error_type", "error", "recompilation_count", "recoverable")
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RECOMPILATION_COUNT_FIELD_NUMBER: _ClassVar[int]
    RECOVERABLE_FIELD_NUMBER: _ClassVar[int]
    error_type: str
    error: str
    recompilation_count: int
    recoverable: bool
    def __init__(self, error_type: _Optional[str] = ..., error: _Optional[str] = ..., recompilation_count: _Optional[int] = ..., recoverable: _Optional[bool] = ...) -> None: ...

class SeedTransition(_message.Message):
    __slots__ = ("instance_id", "slot_id", "from_stage", "to_stage", "gate", "reason")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STAGE_FIELD_NUMBER: _ClassVar[int]
    TO_STAGE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    slot_id: str
    from_stage: SeedStage
    to_stage: SeedStage
    gate: str
    reason: str
    def __init__(self, instance_id: _Optional[str] = ..., slot_id: _Optional[str] = ..., from_stage: _Optional[_Union[SeedStage, str]] = ..., to_stage: _Optional[_Union[SeedStage, str]] = ..., gate: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CommandRejected(_message.Message):
    __slots__ = ("error_type", "error", "origin_topic", "origin_partition", "origin_offset")
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_TOPIC_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_PARTITION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_OFFSET_FIELD_NUMBER: _ClassVar[int]
    error_type: str
    error: str
    origin_topic: str
    origin_partition: int
    origin_offset: int
    def __init__(self, error_type: _Optional[str] = ..., error: _Optional[str] = ..., origin_topic: _Optional[str] = ..., origin_partition: _Optional[int] = ..., origin_offset: _Optional[int] = ...) -> None: ...

class SafetyEvent(_message.Message):
    __slots__ = ("event_id", "timestamp", "subsystem", "source_id", "severity", "message", "breaker_failure", "breaker_transition", "conservative_mode", "timing_violation", "hardware_profile", "pause_entered", "pause_exited", "quota_decision", "quota_reset", "checkpoint_recompilation", "checkpoint_overhead", "teacher_memory", "checkpoint_fallback", "seed_transition", "teacher_loading_timeout", "command_rejected")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SUBSYSTEM_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BREAKER_FAILURE_FIELD_NUMBER: _ClassVar[int]
    BREAKER_TRANSITION_FIELD_NUMBER: _ClassVar[int]
    CONSERVATIVE_MODE_FIELD_NUMBER: _ClassVar[int]
    TIMING_VIOLATION_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_PROFILE_FIELD_NUMBER: _ClassVar[int]
    PAUSE_ENTERED_FIELD_NUMBER: _ClassVar[int]
    PAUSE_EXITED_FIELD_NUMBER: _ClassVar[int]
    QUOTA_DECISION_FIELD_NUMBER: _ClassVar[int]
    QUOTA_RESET_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_RECOMPILATION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_OVERHEAD_FIELD_NUMBER: _ClassVar[int]
    TEACHER_MEMORY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    SEED_TRANSITION_FIELD_NUMBER: _ClassVar[int]
    TEACHER_LOADING_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_REJECTED_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    timestamp: _timestamp_pb2.Timestamp
    subsystem: str
    source_id: str
    severity: TelemetryLevel
    message: str
    breaker_failure: BreakerFailure
    breaker_transition: BreakerTransition
    conservative_mode: ConservativeModeChanged
    timing_violation: TimingViolation
    hardware_profile: HardwareProfile
    pause_entered: PauseEntered
    pause_exited: PauseExited
    quota_decision: QuotaDecision
    quota_reset: QuotaReset
    checkpoint_recompilation: CheckpointRecompilation
    checkpoint_overhead: CheckpointOverhead
    teacher_memory: TeacherMemory
    checkpoint_fallback: CheckpointFallback
    seed_transition: SeedTransition
    teacher_loading_timeout: TeacherLoadingTimeout
    command_rejected: CommandRejected
    def __init__(self, event_id: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., subsystem: _Optional[str] = ..., source_id: _Optional[str] = ..., severity: _Optional[_Union[TelemetryLevel, str]] = ..., message: _Optional[str] = ..., breaker_failure: _Optional[_Union[BreakerFailure, _Mapping]] = ..., breaker_transition: _Optional[_Union[BreakerTransition, _Mapping]] = ..., conservative_mode: _Optional[_Union[ConservativeModeChanged, _Mapping]] = ..., timing_violation: _Optional[_Union[TimingViolation, _Mapping]] = ..., hardware_profile: _Optional[_Union[HardwareProfile, _Mapping]] = ..., pause_entered: _Optional[_Union[PauseEntered, _Mapping]] = ..., pause_exited: _Optional[_Union[PauseExited, _Mapping]] = ..., quota_decision: _Optional[_Union[QuotaDecision, _Mapping]] = ..., quota_reset: _Optional[_Union[QuotaReset, _Mapping]] = ..., checkpoint_recompilation: _Optional[_Union[CheckpointRecompilation, _Mapping]] = ..., checkpoint_overhead: _Optional[_Union[CheckpointOverhead, _Mapping]] = ..., teacher_memory: _Optional[_Union[TeacherMemory, _Mapping]] = ..., checkpoint_fallback: _Optional[_Union[CheckpointFallback, _Mapping]] = ..., seed_transition: _Optional[_Union[SeedTransition, _Mapping]] = ..., teacher_loading_timeout: _Optional[_Union[TeacherLoadingTimeout, _Mapping]] = ..., command_rejected: _Optional[_Union[CommandRejected, _Mapping]] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("shape", "dtype")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class Attribute(_message.Message):
    __slots__ = ("key", "i", "f", "s", "b", "ints", "floats")
    KEY_FIELD_NUMBER: _ClassVar[int]
    I_FIELD_NUMBER: _ClassVar[int]
    F_FIELD_NUMBER: _ClassVar[int]
    S_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    INTS_FIELD_NUMBER: _ClassVar[int]
    FLOATS_FIELD_NUMBER: _ClassVar[int]
    key: str
    i: int
    f: float
    s: str
    b: bool
    ints: IntList
    floats: FloatList
    def __init__(self, key: _Optional[str] = ..., i: _Optional[int] = ..., f: _Optional[float] = ..., s: _Optional[str] = ..., b: _Optional[bool] = ..., ints: _Optional[_Union[IntList, _Mapping]] = ..., floats: _Optional[_Union[FloatList, _Mapping]] = ...) -> None: ...

class OpNode(_message.Message):
    __slots__ = ("id", "op", "inputs", "attributes")
    ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    op: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    attributes: _containers.RepeatedCompositeFieldContainer[Attribute]
    def __init__(self, id: _Optional[str] = ..., op: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., attributes: _Optional[_Iterable[_Union[Attribute, _Mapping]]] = ...) -> None: ...

class BlueprintIR(_message.Message):
    __slots__ = ("blueprint_id", "name", "ir_version", "input", "nodes", "output", "metadata", "author", "created_at")
    BLUEPRINT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IR_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    blueprint_id: str
    name: str
    ir_version: int
    input: TensorSpec
    nodes: _containers.RepeatedCompositeFieldContainer[OpNode]
    output: str
    metadata: _containers.RepeatedCompositeFieldContainer[KeyValue]
    author: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, blueprint_id: _Optional[str] = ..., name: _Optional[str] = ..., ir_version: _Optional[int] = ..., input: _Optional[_Union[TensorSpec, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[OpNode, _Mapping]]] = ..., output: _Optional[str] = ..., metadata: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., author: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CompilationRequest(_message.Message):
    __slots__ = ("request_id", "blueprint_id", "strategy", "priority", "requestor", "blueprint", "device", "requested_at", "deadline_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUESTOR_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    blueprint_id: str
    strategy: CompilationStrategy
    priority: int
    requestor: str
    blueprint: BlueprintIR
    device: str
    requested_at: _timestamp_pb2.Timestamp
    deadline_ms: int
    def __init__(self, request_id: _Optional[str] = ..., blueprint_id: _Optional[str] = ..., strategy: _Optional[_Union[CompilationStrategy, str]] = ..., priority: _Optional[int] = ..., requestor: _Optional[str] = ..., blueprint: _Optional[_Union[BlueprintIR, _Mapping]] = ..., device: _Optional[str] = ..., requested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class EmergencyCompile(_message.Message):
    __slots__ = ("request_id", "blueprint_id", "blueprint", "requestor", "reason", "authorization_token", "device", "requested_at", "deadline_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_ID_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_FIELD_NUMBER: _ClassVar[int]
    REQUESTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    blueprint_id: str
    blueprint: BlueprintIR
    requestor: str
    reason: str
    authorization_token: str
    device: str
    requested_at: _timestamp_pb2.Timestamp
    deadline_ms: int
    def __init__(self, request_id: _Optional[str] = ..., blueprint_id: _Optional[str] = ..., blueprint: _Optional[_Union[BlueprintIR, _Mapping]] = ..., requestor: _Optional[str] = ..., reason: _Optional[str] = ..., authorization_token: _Optional[str] = ..., device: _Optional[str] = ..., requested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class CompilationResult(_message.Message):
    __slots__ = ("request_id", "blueprint_id", "success", "strategy", "artifact_id", "failure_reason", "error", "queue_ms", "compile_ms", "total_ms", "cache_level", "conservative_mode", "worker_id", "completed_at", "requestor", "strategy_reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPILE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    CACHE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    CONSERVATIVE_MODE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUESTOR_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    blueprint_id: str
    success: bool
    strategy: CompilationStrategy
    artifact_id: str
    failure_reason: FailureReason
    error: str
    queue_ms: int
    compile_ms: int
    total_ms: int
    cache_level: CacheLevel
    conservative_mode: bool
    worker_id: str
    completed_at: _timestamp_pb2.Timestamp
    requestor: str
    strategy_reason: str
    def __init__(self, request_id: _Optional[str] = ..., blueprint_id: _Optional[str] = ..., success: _Optional[bool] = ..., strategy: _Optional[_Union[CompilationStrategy, str]] = ..., artifact_id: _Optional[str] = ..., failure_reason: _Optional[_Union[FailureReason, str]] = ..., error: _Optional[str] = ..., queue_ms: _Optional[int] = ..., compile_ms: _Optional[int] = ..., total_ms: _Optional[int] = ..., cache_level: _Optional[_Union[CacheLevel, str]] = ..., conservative_mode: _Optional[bool] = ..., worker_id: _Optional[str] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., requestor: _Optional[str] = ..., strategy_reason: _Optional[str] = ...) -> None: ...

class CompilationComplete(_message.Message):
    __slots__ = ("request_id", "blueprint_id", "artifact_id", "strategy", "artifact_sha256", "store_uri", "compile_ms", "completed_at")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    STORE_URI_FIELD_NUMBER: _ClassVar[int]
    COMPILE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    blueprint_id: str
    artifact_id: str
    strategy: CompilationStrategy
    artifact_sha256: str
    store_uri: str
    compile_ms: int
    completed_at: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., blueprint_id: _Optional[str] = ..., artifact_id: _Optional[str] = ..., strategy: _Optional[_Union[CompilationStrategy, str]] = ..., artifact_sha256: _Optional[str] = ..., store_uri: _Optional[str] = ..., compile_ms: _Optional[int] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CompiledKernelArtifact(_message.Message):
    __slots__ = ("artifact_id", "blueprint_id", "blueprint_sha256", "strategy", "store_uri", "sha256", "signature", "signature_algorithm", "key_id", "size_bytes", "torch_version", "device", "device_name", "cuda_version", "triton_version", "compiler_version", "compile_options", "input", "has_backward", "created_at")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_ID_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STORE_URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    CUDA_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRITON_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPILER_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPILE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    HAS_BACKWARD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    blueprint_id: str
    blueprint_sha256: str
    strategy: CompilationStrategy
    store_uri: str
    sha256: str
    signature: bytes
    signature_algorithm: str
    key_id: str
    size_bytes: int
    torch_version: str
    device: str
    device_name: str
    cuda_version: str
    triton_version: str
    compiler_version: str
    compile_options: _containers.RepeatedCompositeFieldContainer[KeyValue]
    input: TensorSpec
    has_backward: bool
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, artifact_id: _Optional[str] = ..., blueprint_id: _Optional[str] = ..., blueprint_sha256: _Optional[str] = ..., strategy: _Optional[_Union[CompilationStrategy, str]] = ..., store_uri: _Optional[str] = ..., sha256: _Optional[str] = ..., signature: _Optional[bytes] = ..., signature_algorithm: _Optional[str] = ..., key_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., torch_version: _Optional[str] = ..., device: _Optional[str] = ..., device_name: _Optional[str] = ..., cuda_version: _Optional[str] = ..., triton_version: _Optional[str] = ..., compiler_version: _Optional[str] = ..., compile_options: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., input: _Optional[_Union[TensorSpec, _Mapping]] = ..., has_backward: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PauseCommand(_message.Message):
    __slots__ = ("command_id", "action", "target_instance", "target_slots", "reason", "quota_ms", "max_duration_ms", "authorization_token", "issued_by", "issued_at")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_SLOTS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    QUOTA_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ISSUED_BY_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    action: PauseAction
    target_instance: str
    target_slots: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    quota_ms: int
    max_duration_ms: int
    authorization_token: str
    issued_by: str
    issued_at: _timestamp_pb2.Timestamp
    def __init__(self, command_id: _Optional[str] = ..., action: _Optional[_Union[PauseAction, str]] = ..., target_instance: _Optional[str] = ..., target_slots: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., quota_ms: _Optional[int] = ..., max_duration_ms: _Optional[int] = ..., authorization_token: _Optional[str] = ..., issued_by: _Optional[str] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordHeader(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("request_id", "kind", "requestor", "blueprint_id", "origin_topic", "origin_partition", "origin_offset", "authorized", "success", "failure_reason", "strategy", "strategy_reason", "artifact_id", "cache_level", "worker_id", "error", "at", "dead_lettered")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REQUESTOR_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_TOPIC_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_PARTITION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_OFFSET_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZED_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_REASON_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    CACHE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    kind: RequestKind
    requestor: str
    blueprint_id: str
    origin_topic: str
    origin_partition: int
    origin_offset: int
    authorized: bool
    success: bool
    failure_reason: FailureReason
    strategy: CompilationStrategy
    strategy_reason: str
    artifact_id: str
    cache_level: CacheLevel
    worker_id: str
    error: str
    at: _timestamp_pb2.Timestamp
    dead_lettered: bool
    def __init__(self, request_id: _Optional[str] = ..., kind: _Optional[_Union[RequestKind, str]] = ..., requestor: _Optional[str] = ..., blueprint_id: _Optional[str] = ..., origin_topic: _Optional[str] = ..., origin_partition: _Optional[int] = ..., origin_offset: _Optional[int] = ..., authorized: _Optional[bool] = ..., success: _Optional[bool] = ..., failure_reason: _Optional[_Union[FailureReason, str]] = ..., strategy: _Optional[_Union[CompilationStrategy, str]] = ..., strategy_reason: _Optional[str] = ..., artifact_id: _Optional[str] = ..., cache_level: _Optional[_Union[CacheLevel, str]] = ..., worker_id: _Optional[str] = ..., error: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dead_lettered: _Optional[bool] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("origin_topic", "origin_partition", "origin_offset", "origin_key", "origin_value", "origin_value_truncated", "origin_headers", "origin_timestamp_ms", "error_type", "error", "consumer_group", "failed_at", "origin_key_truncated", "origin_headers_truncated", "origin_value_redacted")
    ORIGIN_TOPIC_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_PARTITION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_OFFSET_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_KEY_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_VALUE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_VALUE_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_HEADERS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_KEY_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_HEADERS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_VALUE_REDACTED_FIELD_NUMBER: _ClassVar[int]
    origin_topic: str
    origin_partition: int
    origin_offset: int
    origin_key: bytes
    origin_value: bytes
    origin_value_truncated: bool
    origin_headers: _containers.RepeatedCompositeFieldContainer[RecordHeader]
    origin_timestamp_ms: int
    error_type: str
    error: str
    consumer_group: str
    failed_at: _timestamp_pb2.Timestamp
    origin_key_truncated: bool
    origin_headers_truncated: bool
    origin_value_redacted: bool
    def __init__(self, origin_topic: _Optional[str] = ..., origin_partition: _Optional[int] = ..., origin_offset: _Optional[int] = ..., origin_key: _Optional[bytes] = ..., origin_value: _Optional[bytes] = ..., origin_value_truncated: _Optional[bool] = ..., origin_headers: _Optional[_Iterable[_Union[RecordHeader, _Mapping]]] = ..., origin_timestamp_ms: _Optional[int] = ..., error_type: _Optional[str] = ..., error: _Optional[str] = ..., consumer_group: _Optional[str] = ..., failed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., origin_key_truncated: _Optional[bool] = ..., origin_headers_truncated: _Optional[bool] = ..., origin_value_redacted: _Optional[bool] = ...) -> None: ...
