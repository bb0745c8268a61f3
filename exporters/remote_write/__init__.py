"""Remote write: OTLP metrics translated to Prometheus series, batched, encoded and sent to a TSDB."""
