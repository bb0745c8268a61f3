from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetricType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_TYPE_UNSPECIFIED: _ClassVar[MetricType]
    METRIC_TYPE_COUNTER: _ClassVar[MetricType]
    METRIC_TYPE_GAUGE: _ClassVar[MetricType]
    METRIC_TYPE_HISTOGRAM: _ClassVar[MetricType]
    METRIC_TYPE_GAUGEHISTOGRAM: _ClassVar[MetricType]
    METRIC_TYPE_SUMMARY: _ClassVar[MetricType]
    METRIC_TYPE_INFO: _ClassVar[MetricType]
    METRIC_TYPE_STATESET: _ClassVar[MetricType]
METRIC_TYPE_UNSPECIFIED: MetricType
METRIC_TYPE_COUNTER: MetricType
METRIC_TYPE_GAUGE: MetricType
METRIC_TYPE_HISTOGRAM: MetricType
METRIC_TYPE_GAUGEHISTOGRAM: MetricType
METRIC_TYPE_SUMMARY: MetricType
METRIC_TYPE_INFO: MetricType
METRIC_TYPE_STATESET: MetricType

class Request(_message.Message):
    __slots__ = ("symbols", "series_label_counts", "series_label_refs", "sample_series_ref_deltas", "sample_counts", "timestamps", "values", "start_timestamps", "metadata", "metadata_unchanged", "histograms", "exemplars")
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    SERIES_LABEL_COUNTS_FIELD_NUMBER: _ClassVar[int]
    SERIES_LABEL_REFS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_SERIES_REF_DELTAS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    START_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    METADATA_UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAMS_FIELD_NUMBER: _ClassVar[int]
    EXEMPLARS_FIELD_NUMBER: _ClassVar[int]
    symbols: _containers.RepeatedScalarFieldContainer[str]
    series_label_counts: _containers.RepeatedScalarFieldContainer[int]
    series_label_refs: _containers.RepeatedScalarFieldContainer[int]
    sample_series_ref_deltas: _containers.RepeatedScalarFieldContainer[int]
    sample_counts: _containers.RepeatedScalarFieldContainer[int]
    timestamps: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    start_timestamps: _containers.RepeatedScalarFieldContainer[int]
    metadata: _containers.RepeatedCompositeFieldContainer[MetricMetadata]
    metadata_unchanged: bool
    histograms: _containers.RepeatedCompositeFieldContainer[HistogramSample]
    exemplars: _containers.RepeatedCompositeFieldContainer[ExemplarSample]
    def __init__(self, symbols: _Optional[_Iterable[str]] = ..., series_label_counts: _Optional[_Iterable[int]] = ..., series_label_refs: _Optional[_Iterable[int]] = ..., sample_series_ref_deltas: _Optional[_Iterable[int]] = ..., sample_counts: _Optional[_Iterable[int]] = ..., timestamps: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[int]] = ..., start_timestamps: _Optional[_Iterable[int]] = ..., metadata: _Optional[_Iterable[_Union[MetricMetadata, _Mapping]]] = ..., metadata_unchanged: _Optional[bool] = ..., histograms: _Optional[_Iterable[_Union[HistogramSample, _Mapping]]] = ..., exemplars: _Optional[_Iterable[_Union[ExemplarSample, _Mapping]]] = ...) -> None: ...

class MetricMetadata(_message.Message):
    __slots__ = ("name_ref", "type", "help_ref", "unit_ref")
    NAME_REF_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    HELP_REF_FIELD_NUMBER: _ClassVar[int]
    UNIT_REF_FIELD_NUMBER: _ClassVar[int]
    name_ref: int
    type: MetricType
    help_ref: int
    unit_ref: int
    def __init__(self, name_ref: _Optional[int] = ..., type: _Optional[_Union[MetricType, str]] = ..., help_ref: _Optional[int] = ..., unit_ref: _Optional[int] = ...) -> None: ...

class HistogramSample(_message.Message):
    __slots__ = ("series_ref", "timestamp", "count_int", "count_float_bits", "sum_bits", "schema", "zero_threshold_bits", "zero_count", "negative_span_offsets", "negative_span_lengths", "negative_deltas", "positive_span_offsets", "positive_span_lengths", "positive_deltas", "start_timestamp")
    SERIES_REF_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    COUNT_INT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FLOAT_BITS_FIELD_NUMBER: _ClassVar[int]
    SUM_BITS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    ZERO_THRESHOLD_BITS_FIELD_NUMBER: _ClassVar[int]
    ZERO_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_SPAN_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_SPAN_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_DELTAS_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_SPAN_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_SPAN_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_DELTAS_FIELD_NUMBER: _ClassVar[int]
    START_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    series_ref: int
    timestamp: int
    count_int: int
    count_float_bits: int
    sum_bits: int
    schema: int
    zero_threshold_bits: int
    zero_count: int
    negative_span_offsets: _containers.RepeatedScalarFieldContainer[int]
    negative_span_lengths: _containers.RepeatedScalarFieldContainer[int]
    negative_deltas: _containers.RepeatedScalarFieldContainer[int]
    positive_span_offsets: _containers.RepeatedScalarFieldContainer[int]
    positive_span_lengths: _containers.RepeatedScalarFieldContainer[int]
    positive_deltas: _containers.RepeatedScalarFieldContainer[int]
    start_timestamp: int
    def __init__(self, series_ref: _Optional[int] = ..., timestamp: _Optional[int] = ..., count_int: _Optional[int] = ..., count_float_bits: _Optional[int] = ..., sum_bits: _Optional[int] = ..., schema: _Optional[int] = ..., zero_threshold_bits: _Optional[int] = ..., zero_count: _Optional[int] = ..., negative_span_offsets: _Optional[_Iterable[int]] = ..., negative_span_lengths: _Optional[_Iterable[int]] = ..., negative_deltas: _Optional[_Iterable[int]] = ..., positive_span_offsets: _Optional[_Iterable[int]] = ..., positive_span_lengths: _Optional[_Iterable[int]] = ..., positive_deltas: _Optional[_Iterable[int]] = ..., start_timestamp: _Optional[int] = ...) -> None: ...

class ExemplarSample(_message.Message):
    __slots__ = ("series_ref", "labels", "value_bits", "timestamp")
    SERIES_REF_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VALUE_BITS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    series_ref: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    value_bits: int
    timestamp: int
    def __init__(self, series_ref: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ..., value_bits: _Optional[int] = ..., timestamp: _Optional[int] = ...) -> None: ...
