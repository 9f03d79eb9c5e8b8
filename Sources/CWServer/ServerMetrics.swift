import CoreMetrics
import Foundation
import Metrics
import Prometheus

/// The server's metrics, registered through swift-metrics on a per-server
/// `PrometheusMetricsFactory` (no global bootstrap, so several servers — e.g. in tests — can live in
/// one process) and exported by `GET /metrics` in Prometheus text format.
///
/// Names follow vLLM where a vLLM metric exists (so dashboards carry over):
/// - `vllm:num_requests_running`, `vllm:num_requests_waiting` (gauges)
/// - `vllm:time_to_first_token_seconds`, `vllm:time_per_output_token_seconds` (histograms)
/// - `vllm:prompt_tokens_total`, `vllm:generation_tokens_total` (counters)
/// - `vllm:lora_requests_info{running_lora_adapters, waiting_lora_adapters, max_lora}` (gauge, value = update time)
/// - `chunkwise:kv_cache_bytes{format="fp32"}` (gauge: bytes allocated for running sequences' KV caches)
/// - `vllm:prefix_cache_queries_total`, `vllm:prefix_cache_hits_total` (counters: prompt tokens of
///   requests that could use the prompt cache, and those of them taken from it) and
///   `chunkwise:prefix_cache_bytes` (gauge: bytes the prompt cache holds)
/// - `chunkwise:chunk_rank` (histogram of the LoRA rank chosen per chunk — fed by the ChunkWise scheduler)
/// - `chunkwise:requests_total{endpoint, status}` (counter of finished HTTP requests)
/// - `chunkwise:batch_sequences` (histogram of the sequences that share one forward step — how well
///   continuous batching fills its steps) and `chunkwise:step_seconds` (histogram of the forward
///   steps' durations)
public final class ServerMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let factory: PrometheusMetricsFactory
    let running: CoreMetrics.Gauge
    let waiting: CoreMetrics.Gauge
    let ttft: CoreMetrics.Timer
    let perToken: CoreMetrics.Timer
    let promptTokens: CoreMetrics.Counter
    let generationTokens: CoreMetrics.Counter
    let kvBytes: CoreMetrics.Gauge
    let prefixQueries: CoreMetrics.Counter
    let prefixHits: CoreMetrics.Counter
    let prefixCacheBytes: CoreMetrics.Gauge
    /// The LoRA rank chosen for a chunk; the ChunkWise scheduler records into it.
    public let chunkRank: CoreMetrics.Recorder
    let batchSequences: CoreMetrics.Recorder
    let stepTime: CoreMetrics.Timer

    public init() {
        let registry = PrometheusCollectorRegistry()
        var f = PrometheusMetricsFactory(registry: registry)
        let latency: [Duration] = [.milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
                                   .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500),
                                   .seconds(5), .seconds(10), .seconds(30)]
        f.durationHistogramBuckets["vllm:time_to_first_token_seconds"] = latency
        f.durationHistogramBuckets["vllm:time_per_output_token_seconds"] = latency
        f.valueHistogramBuckets["chunkwise:chunk_rank"] = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256]
        f.valueHistogramBuckets["chunkwise:batch_sequences"] = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 64]
        f.durationHistogramBuckets["chunkwise:step_seconds"] = [.microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
                                                               .milliseconds(10), .milliseconds(15), .milliseconds(20), .milliseconds(25),
                                                               .milliseconds(30), .milliseconds(50), .milliseconds(100), .milliseconds(250),
                                                               .seconds(1)]
        self.registry = registry
        self.factory = f
        running = CoreMetrics.Gauge(label: "vllm:num_requests_running", factory: f)
        waiting = CoreMetrics.Gauge(label: "vllm:num_requests_waiting", factory: f)
        ttft = CoreMetrics.Timer(label: "vllm:time_to_first_token_seconds", factory: f)
        perToken = CoreMetrics.Timer(label: "vllm:time_per_output_token_seconds", factory: f)
        promptTokens = CoreMetrics.Counter(label: "vllm:prompt_tokens_total", factory: f)
        generationTokens = CoreMetrics.Counter(label: "vllm:generation_tokens_total", factory: f)
        kvBytes = CoreMetrics.Gauge(label: "chunkwise:kv_cache_bytes", dimensions: [("format", "fp32")], factory: f)
        prefixQueries = CoreMetrics.Counter(label: "vllm:prefix_cache_queries_total", factory: f)
        prefixHits = CoreMetrics.Counter(label: "vllm:prefix_cache_hits_total", factory: f)
        prefixCacheBytes = CoreMetrics.Gauge(label: "chunkwise:prefix_cache_bytes", factory: f)
        chunkRank = CoreMetrics.Recorder(label: "chunkwise:chunk_rank", factory: f)
        batchSequences = CoreMetrics.Recorder(label: "chunkwise:batch_sequences", factory: f)
        stepTime = CoreMetrics.Timer(label: "chunkwise:step_seconds", factory: f)
        running.record(0)
        waiting.record(0)
        kvBytes.record(0)
        prefixCacheBytes.record(0)
    }

    /// Counts one finished HTTP request.
    public func countRequest(endpoint: String, status: Int) {
        CoreMetrics.Counter(label: "chunkwise:requests_total", dimensions: [("endpoint", endpoint), ("status", String(status))], factory: factory).increment()
    }

    /// The Prometheus text exposition.
    public func render() -> String { registry.emitToString() }
}

/// The `vllm:lora_requests_info` series: one gauge whose labels are the current adapter sets; a
/// change of labels replaces the series. Owned by the batch scheduler actor.
struct LoRAInfoGauge {
    let registry: PrometheusCollectorRegistry
    let maxLora: Int
    private var current: (labels: [String], gauge: Prometheus.Gauge)?

    init(registry: PrometheusCollectorRegistry, maxLora: Int) {
        self.registry = registry
        self.maxLora = maxLora
        update(running: [], waiting: [])
    }

    mutating func update(running: [String], waiting: [String]) {
        let r = Array(Set(running)).sorted().joined(separator: ","), w = Array(Set(waiting)).sorted().joined(separator: ",")
        let labels = [r, w]
        if let c = current, c.labels == labels { return }
        if let c = current { registry.unregisterGauge(c.gauge) }
        let descriptor = MetricNameDescriptor(metricName: "vllm:lora_requests_info", unitName: "",
                                              helpText: "Running and waiting LoRA adapters (value: the time of the last change)")
        let g = registry.makeGauge(descriptor: descriptor,
                                   labels: [("running_lora_adapters", r), ("waiting_lora_adapters", w), ("max_lora", String(maxLora))])
        g.set(Date().timeIntervalSince1970)
        current = (labels, g)
    }
}
