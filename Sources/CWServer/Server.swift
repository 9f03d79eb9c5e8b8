import ChunkWise
import CWLoRA
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle

/// Settings of `chunkwise serve`.
public struct ServerConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    /// When set, `/v1/*` requests need `Authorization: Bearer <apiKey>` (401 otherwise).
    /// `/health` and `/metrics` stay open.
    public var apiKey: String? = nil
    /// Sequences decoded together (continuous batching slots).
    public var maxConcurrent = 8
    /// Requests waiting for a slot; when full, new requests get 429 at once.
    public var maxQueue = 64
    /// KV cache bytes for all running sequences (nil: 1 GiB).
    public var kvBudgetBytes: Int? = nil
    /// Largest `max_tokens` a request may ask for.
    public var maxTokensLimit = 2048
    /// Largest request body (413 beyond).
    public var maxBodyBytes = 1 << 20
    /// Root directory for `POST /v1/load_lora_adapter` (nil: run-time loading disabled).
    public var adapterDir: String? = nil
    /// Adapters registered at startup: name → path.
    public var adapters: [(name: String, path: String)] = []
    public var precision: Precision = .fast
    public var threads = ProcessInfo.processInfo.activeProcessorCount
    /// Context length (nil: the model's).
    public var contextLength: Int? = nil
    /// The id of the base model in the API (nil: the model file's name).
    public var servedModelName: String? = nil
    /// Prompt tokens processed per batch step.
    public var prefillTokensPerStep = 256
    /// Bytes of finished prompts' KV blocks kept for later requests that start the same way (part
    /// of the KV budget; 0 turns the prompt cache off).
    public var prefixCacheBytes = 128 << 20

    public init() {}
}

/// Everything a request handler needs; immutable (the mutable parts are actors).
public final class ServerState: Sendable {
    public let loaded: LoadedModel
    public let config: ServerConfiguration
    public let modelID: String
    public let contextLength: Int
    public let registry: AdapterRegistry
    public let scheduler: BatchScheduler
    public let metrics: ServerMetrics
    public let chatTemplate: ChatTemplate?
    public let defaultSystemPrompt: String?
    /// Where the ChunkWise scheduler plugs in (see `PolicyResolvers`).
    public let policyResolver: PolicyResolver
    let created = Int(Date().timeIntervalSince1970)

    public init(loaded: LoadedModel, config: ServerConfiguration, policyResolver: @escaping PolicyResolver = PolicyResolvers.current) async throws {
        self.loaded = loaded
        self.config = config
        self.modelID = config.servedModelName ?? loaded.name
        self.contextLength = min(config.contextLength ?? loaded.model.config.maxContext, loaded.model.config.maxContext)
        self.metrics = ServerMetrics()
        self.registry = AdapterRegistry(model: loaded.model, baseModelID: modelID, adapterDir: config.adapterDir,
                                        storage: config.precision == .exact ? .f32 : .q8)
        let limits = SchedulerLimits(maxRunning: max(1, config.maxConcurrent), maxWaiting: max(0, config.maxQueue),
                                     kvBudgetBytes: config.kvBudgetBytes ?? (1 << 30), prefillTokensPerStep: max(1, config.prefillTokensPerStep),
                                     prefixCacheBytes: max(0, config.prefixCacheBytes))
        self.scheduler = BatchScheduler(model: loaded.model, tokenizer: loaded.tokenizer, contextLength: contextLength,
                                        threads: config.threads, precision: config.precision, limits: limits, metrics: metrics)
        self.chatTemplate = loaded.chatTemplate.flatMap(ChatTemplate.detect)
        self.defaultSystemPrompt = loaded.chatTemplate.flatMap(ChatTemplate.defaultSystemPrompt)
        self.policyResolver = policyResolver
        for a in config.adapters { try await registry.register(name: a.name, path: a.path) }
    }
}

/// Stops the batch scheduler on graceful shutdown (after the HTTP server has drained).
struct SchedulerService: Service {
    let scheduler: BatchScheduler
    func run() async throws {
        try? await gracefulShutdown()
        await scheduler.shutdown()
    }
}

/// Checks `Authorization: Bearer KEY` on `/v1/*` routes.
struct APIKeyMiddleware<Context: RequestContext>: RouterMiddleware {
    let key: String
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.uri.path.hasPrefix("/v1/") else { return try await next(request, context) }
        let header = request.headers[.authorization] ?? ""
        let given = header.hasPrefix("Bearer ") ? String(header.dropFirst(7)) : ""
        // Compare without an early exit on the first differing byte.
        let a = Array(given.utf8), b = Array(key.utf8)
        var diff = a.count ^ b.count
        for i in 0..<b.count { diff |= Int((i < a.count ? a[i] : 0) ^ b[i]) }
        guard diff == 0 else { throw APIError.unauthorized }
        return try await next(request, context)
    }
}

/// Counts finished requests by endpoint and status, and logs them.
struct RequestLogMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: ServerMetrics
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        let response = try await next(request, context)
        let path = request.uri.path
        let endpoint = ["/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/load_lora_adapter", "/v1/unload_lora_adapter",
                        "/health", "/metrics"].contains(path) ? path : "other"
        metrics.countRequest(endpoint: endpoint, status: response.status.code)
        context.logger.info("request", metadata: ["method": "\(request.method)", "path": "\(path)", "status": "\(response.status.code)",
                                                  "ms": "\(Int(seconds(ContinuousClock.now - start) * 1000))"])
        return response
    }
}

/// Builds the HTTP application: routes, middlewares (errors → OpenAI JSON, API key, request log)
/// and the scheduler's shutdown service.
public func makeApplication(state: ServerState, logger: Logger = Logger(label: "chunkwise.server"))
    -> some ApplicationProtocol
{
    let router = Router()
    router.add(middleware: RequestLogMiddleware(metrics: state.metrics))
    router.add(middleware: OpenAIErrorMiddleware())
    if let key = state.config.apiKey { router.add(middleware: APIKeyMiddleware(key: key)) }
    let api = OpenAIHandlers(state: state)
    router.get("/health") { _, _ in try await api.health() }
    router.get("/metrics") { _, _ in try await api.metricsText() }
    router.get("/v1/models") { _, _ in try await api.models() }
    router.post("/v1/completions") { req, _ in try await api.completions(req, chat: false) }
    router.post("/v1/chat/completions") { req, _ in try await api.completions(req, chat: true) }
    router.post("/v1/load_lora_adapter") { req, _ in try await api.loadAdapter(req) }
    router.post("/v1/unload_lora_adapter") { req, _ in try await api.unloadAdapter(req) }
    return Application(router: router,
                       configuration: .init(address: .hostname(state.config.host, port: state.config.port), serverName: "chunkwise"),
                       services: [SchedulerService(scheduler: state.scheduler)],
                       logger: logger)
}

/// Runs the server until SIGTERM/SIGINT, then shuts down gracefully (in-flight requests finish).
public func runServer(state: ServerState, logger: Logger) async throws {
    let app = makeApplication(state: state, logger: logger)
    let group = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    try await group.run()
}
