import CWKernels
import ChunkWise
import CWLoRA
import Foundation
import Logging

/// The delta a sequence runs with (a bound adapter or weighted combination of adapters), and the
/// adapter names it came from (for `/metrics`). Holding one keeps that binding alive: a request
/// finishes on the adapter version it started with even if the adapter is unloaded or replaced.
public struct BoundDelta: @unchecked Sendable {
    /// Immutable once bound (`LoRAStack` is immutable and thread-safe to apply).
    public let delta: any ProjectionDelta
    /// Names of the adapters in it, in order.
    public let adapterNames: [String]

    public init(delta: any ProjectionDelta, adapterNames: [String]) {
        self.delta = delta
        self.adapterNames = adapterNames
    }
}

/// Describes a registered adapter for `/v1/models`.
public struct AdapterInfo: Sendable, Equatable {
    public let name: String
    public let path: String
    public let rank: Int?
    public let version: Int
    public let created: Int
}

/// The adapters the server knows by name, and the bound stacks requests use.
///
/// Adapters given at startup (`--adapter NAME=PATH`) may live anywhere; adapters loaded at run
/// time (`POST /v1/load_lora_adapter`) must resolve (symlinks followed) to a path under
/// `--adapter-dir`. Weighted combinations (`"lora": [{"name", "scale"}]`) are bound on first use and
/// kept in a small LRU cache keyed by the adapters' versions and scales.
public actor AdapterRegistry {
    struct Entry {
        let name: String
        let path: String
        let adapter: LoRAAdapter
        let stack: LoRAStack
        let version: Int
        let created: Int
    }

    public nonisolated let model: LlamaModel
    /// The resolved `--adapter-dir`, or nil when run-time loading is disabled.
    public nonisolated let adapterDir: String?
    /// The base model's id (an adapter may not take this name).
    public nonisolated let baseModelID: String
    private var entries: [String: Entry] = [:]
    private var nextVersion = 1
    private var combos: [String: LoRAStack] = [:]
    private var comboOrder: [String] = []
    private let comboCapacity = 16
    private let logger = Logger(label: "chunkwise.server.adapters")

    /// Element type of the bound adapter factors (fp16 when the server runs `--precision fast`).
    let storage: LowRankFactor.Storage

    public init(model: LlamaModel, baseModelID: String, adapterDir: String?, storage: LowRankFactor.Storage = .f32) {
        self.model = model
        self.storage = storage
        self.baseModelID = baseModelID
        self.adapterDir = adapterDir.map { URL(fileURLWithPath: $0).standardizedFileURL.resolvingSymlinksInPath().path }
    }

    /// Registers an adapter from any path (startup adapters given on the command line).
    public func register(name: String, path: String) throws(APIError) {
        try validateName(name)
        guard FileManager.default.fileExists(atPath: path) else {
            throw .notFound("no adapter at '\(path)'", param: "lora_path", code: "adapter_not_found")
        }
        try add(name: name, path: path)
    }

    /// Loads an adapter at run time; the path must lie under `--adapter-dir`.
    public func load(name: String, requestedPath: String) throws(APIError) {
        try validateName(name)
        let path = try sandboxedPath(requestedPath)
        try add(name: name, path: path)
    }

    /// Removes an adapter. Requests already running on it keep their binding until they finish.
    public func unload(name: String) throws(APIError) {
        guard entries.removeValue(forKey: name) != nil else {
            throw .notFound("no adapter named '\(name)' is loaded", param: "lora_name", code: "adapter_not_found")
        }
        combos = combos.filter { !$0.key.split(separator: "|").contains { $0.hasPrefix(name + "@") } }
        comboOrder.removeAll { combos[$0] == nil }
        logger.info("adapter unloaded", metadata: ["name": "\(name)"])
    }

    /// Registered adapters, sorted by name.
    public func list() -> [AdapterInfo] {
        entries.values.sorted { $0.name < $1.name }.map {
            AdapterInfo(name: $0.name, path: $0.path, rank: $0.adapter.rank ?? $0.adapter.modules.first?.rank, version: $0.version, created: $0.created)
        }
    }

    public func contains(_ name: String) -> Bool { entries[name] != nil }

    /// The delta for a request: the adapter named by `model` (scale 1) plus the weighted `lora` list
    /// (a name in both takes the list's scale). nil means the base model.
    public func resolve(model modelField: String?, lora: [(name: String, scale: Double)]) throws(APIError) -> BoundDelta? {
        var order: [String] = []
        var scales: [String: Double] = [:]
        if let m = modelField, m != baseModelID {
            guard entries[m] != nil else {
                throw .notFound("the model '\(m)' does not exist (GET /v1/models lists the base model and the adapters)")
            }
            order.append(m)
            scales[m] = 1
        }
        for (i, l) in lora.enumerated() {
            guard entries[l.name] != nil else {
                throw .notFound("lora[\(i)]: no adapter named '\(l.name)' is loaded", param: "lora[\(i)].name", code: "adapter_not_found")
            }
            if scales[l.name] == nil { order.append(l.name) }
            scales[l.name] = l.scale
        }
        order.removeAll { scales[$0] == 0 }
        guard !order.isEmpty else { return nil }
        let chosen = order.compactMap { entries[$0] }
        if chosen.count == 1, scales[chosen[0].name] == 1 {
            return BoundDelta(delta: chosen[0].stack, adapterNames: [chosen[0].name])
        }
        let key = chosen.map { "\($0.name)@\($0.version)*\(scales[$0.name] ?? 1)" }.joined(separator: "|")
        if let s = combos[key] {
            comboOrder.removeAll { $0 == key }
            comboOrder.append(key)
            return BoundDelta(delta: s, adapterNames: chosen.map(\.name))
        }
        let stack: LoRAStack
        do {
            stack = try LoRAStack(model: model, adapters: chosen.map { AdapterBinding($0.adapter, weight: scales[$0.name] ?? 1) }, storage: storage)
        } catch {
            throw .badRequest("cannot combine adapters \(chosen.map(\.name)): \(error)", param: "lora")
        }
        combos[key] = stack
        comboOrder.append(key)
        if comboOrder.count > comboCapacity { combos[comboOrder.removeFirst()] = nil }
        return BoundDelta(delta: stack, adapterNames: chosen.map(\.name))
    }

    private func add(name: String, path: String) throws(APIError) {
        guard entries[name] == nil else {
            throw .badRequest("an adapter named '\(name)' is already loaded (unload it first)", param: "lora_name", code: "adapter_exists")
        }
        let adapter: LoRAAdapter
        let stack: LoRAStack
        do {
            adapter = try LoRAAdapter.load(path: path)
            stack = try LoRAStack(model: model, adapter: adapter, storage: storage)
        } catch {
            throw .badRequest("cannot load adapter '\(name)' from \(path): \(error)", param: "lora_path", code: "invalid_adapter")
        }
        entries[name] = Entry(name: name, path: path, adapter: adapter, stack: stack, version: nextVersion,
                              created: Int(Date().timeIntervalSince1970))
        nextVersion += 1
        logger.info("adapter loaded", metadata: ["name": "\(name)", "path": "\(path)", "rank": "\(adapter.rank ?? 0)"])
    }

    private func validateName(_ name: String) throws(APIError) {
        guard !name.isEmpty, name.count <= 128 else { throw .badRequest("'lora_name' must be 1–128 characters", param: "lora_name") }
        guard !name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw .badRequest("'lora_name' must not contain control characters", param: "lora_name")
        }
        guard name != baseModelID else { throw .badRequest("'lora_name' must differ from the base model's id", param: "lora_name") }
    }

    /// Resolves a requested adapter path inside `--adapter-dir`: relative paths are taken from the
    /// directory, `..` components are refused (400), and the resolved path (symlinks followed) must
    /// stay under the directory (403).
    func sandboxedPath(_ raw: String) throws(APIError) -> String {
        guard let root = adapterDir else {
            throw .forbidden("loading adapters at run time is disabled (start the server with --adapter-dir DIR)", param: "lora_path")
        }
        guard !raw.isEmpty else { throw .badRequest("'lora_path' must not be empty", param: "lora_path") }
        guard !raw.split(separator: "/").contains("..") else {
            throw .badRequest("'lora_path' must not contain '..'", param: "lora_path", code: "invalid_path")
        }
        let joined = raw.hasPrefix("/") ? raw : (root as NSString).appendingPathComponent(raw)
        let resolved = URL(fileURLWithPath: joined).standardizedFileURL.resolvingSymlinksInPath().path
        guard resolved == root || resolved.hasPrefix(root.hasSuffix("/") ? root : root + "/") else {
            throw .forbidden("'lora_path' resolves outside the adapter directory", param: "lora_path")
        }
        guard FileManager.default.fileExists(atPath: resolved) else {
            throw .notFound("no adapter at '\(raw)' under the adapter directory", param: "lora_path", code: "adapter_not_found")
        }
        return resolved
    }
}
