// Sends spans with the OpenTelemetry Node SDK over OTLP/HTTP JSON, then prints what it sent.
//
//   node send-spans.mjs URL [COUNT] [NAME_PREFIX]
//
// URL is the receiver's base URL (http://127.0.0.1:4318, `/v1/traces` is appended) or the full traces URL.
// The same values can come from the environment: OTLP_TRACES_URL, SPAN_COUNT, SPAN_NAME_PREFIX;
// SPANS_PER_TRACE (default 2) groups the spans into traces: the first of each group is the root, the others
// its children. The exporter keeps its defaults: JSON, no compression, the body streamed with
// `Transfer-Encoding: chunked` and no Content-Length.
//
// stdout: a JSON list of {traceId, spanId, parentSpanId, name, attributes}, hex IDs, in the order the spans
// were started. Every span carries one attribute of each OTLP type: string, int, double, bool, array.
// Exit status 0 when every export succeeded, 1 when one failed (the error on stderr), 2 on bad arguments.

import { context, diag, DiagConsoleLogger, DiagLogLevel, trace } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';

const SUCCESS = 0; // ExportResultCode.SUCCESS in @opentelemetry/core

function usage(message) {
  process.stderr.write(`send-spans: ${message}\nusage: node send-spans.mjs URL [COUNT] [NAME_PREFIX]\n`);
  process.exit(2);
}

function tracesUrl(raw) {
  let url;
  try {
    url = new URL(raw);
  } catch {
    usage(`expected an http(s) URL, found ${JSON.stringify(raw)}`);
  }
  if (url.pathname === '' || url.pathname === '/') url.pathname = '/v1/traces';
  return url.toString();
}

function positiveInt(raw, what) {
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0) usage(`${what} must be a positive integer, found ${JSON.stringify(raw)}`);
  return n;
}

// One attribute of each type; the double is never integral, so JSON cannot blur it into an int.
function attributesFor(i) {
  return {
    'test.string': `value-${i}`,
    'test.int': 1000 + i,
    'test.double': i + 0.25,
    'test.bool': i % 2 === 0,
    'test.array': ['alpha', `item-${i}`],
  };
}

// Delegates to the OTLP exporter and remembers every failure, so the exit status tells the truth
// (span processors only log export errors).
class RecordingExporter {
  constructor(inner) {
    this.inner = inner;
    this.failures = [];
  }

  export(spans, resultCallback) {
    this.inner.export(spans, (result) => {
      if (result.code !== SUCCESS) this.failures.push(result.error ?? new Error('export failed'));
      resultCallback(result);
    });
  }

  forceFlush() {
    return this.inner.forceFlush ? this.inner.forceFlush() : Promise.resolve();
  }

  shutdown() {
    return this.inner.shutdown();
  }
}

async function main() {
  const [, , argUrl, argCount, argPrefix] = process.argv;
  const rawUrl = argUrl ?? process.env.OTLP_TRACES_URL;
  if (!rawUrl) usage('missing URL');
  const url = tracesUrl(rawUrl);
  const count = positiveInt(argCount ?? process.env.SPAN_COUNT ?? '4', 'COUNT');
  const prefix = argPrefix ?? process.env.SPAN_NAME_PREFIX ?? 'node-span';
  const perTrace = positiveInt(process.env.SPANS_PER_TRACE ?? '2', 'SPANS_PER_TRACE');

  diag.setLogger(new DiagConsoleLogger(), DiagLogLevel.WARN); // DiagConsoleLogger writes to stderr for warn/error

  const exporter = new RecordingExporter(new OTLPTraceExporter({ url }));
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'node-client' }),
    spanProcessors: [new BatchSpanProcessor(exporter, { maxExportBatchSize: 512, scheduledDelayMillis: 100 })],
  });
  const tracer = provider.getTracer('headwater-e2e', '1.0.0');

  const sent = [];
  let root = null;
  for (let i = 0; i < count; i++) {
    const attributes = attributesFor(i);
    const isRoot = i % perTrace === 0;
    const parentContext = isRoot ? context.active() : trace.setSpan(context.active(), root);
    const span = tracer.startSpan(`${prefix}-${i}`, { attributes }, parentContext);
    const ctx = span.spanContext();
    sent.push({
      traceId: ctx.traceId,
      spanId: ctx.spanId,
      parentSpanId: isRoot ? '' : root.spanContext().spanId,
      name: `${prefix}-${i}`,
      attributes,
    });
    if (isRoot) {
      if (root !== null) root.end();
      root = span;
    } else {
      span.end();
    }
  }
  if (root !== null) root.end();

  await provider.forceFlush();
  await provider.shutdown();

  if (exporter.failures.length > 0) {
    for (const error of exporter.failures) process.stderr.write(`send-spans: export to ${url} failed: ${error}\n`);
    process.exit(1);
  }
  process.stdout.write(`${JSON.stringify(sent)}\n`);
}

main().catch((error) => {
  process.stderr.write(`send-spans: ${error?.stack ?? error}\n`);
  process.exit(1);
});
