"""Everything that leaves the node: OTLP trace export, remote write, file export."""
