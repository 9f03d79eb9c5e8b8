// swift-tools-version: 6.0
//
// ChunkWise — LoRA-adapted language models on the CPU with per-chunk adaptive rank.
//
// Layers (dependencies flow one way, top to bottom):
//   CKernels      C SIMD kernels with runtime CPU dispatch (AVX2 / AVX-512 VNNI / NEON / portable)
//   CWKernels     Swift face of the kernels: tensor types, matmul, thread pool, attention
//   CWFormats     GGUF, safetensors (+ sharded index), HF config.json, llama2.c .bin — memory-mapped
//   CWTokenizers  byte-level BPE (GPT-2 style), SentencePiece BPE, llama2.c tokenizer, tokenizer.json
//   CWTransformer the Llama-family forward pass, KV cache
//   CWLoRA        LoRA adapters: PEFT, GGUF and MLX files; unmerged application, merge/unmerge
//   CWScheduler   the ChunkWise scheduler: rank ladder, difficulty estimator, chunker, policies
//   ChunkWise     the engine (actor), model loading, sampling, streaming generation
//   CWEval        perplexity, SQuAD EM/F1, BLEU/chrF (sacrebleu-exact), the policy report
//   CWServer      `chunkwise serve`: OpenAI-compatible HTTP server (Hummingbird), continuous batching
//   ChunkWiseCLI  the `chunkwise` command-line tool
import PackageDescription

let optimized: [SwiftSetting] = [
    .unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release)),
]

let package = Package(
    name: "ChunkWise",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "ChunkWise", targets: ["ChunkWise"]),
        .executable(name: "chunkwise", targets: ["ChunkWiseCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.4.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.0.0"),
    ],
    targets: [
        .target(
            name: "CKernels",
            cSettings: [
                .unsafeFlags(["-O3", "-fno-math-errno", "-ffp-contract=fast"]),
            ]
        ),
        .target(name: "CWKernels", dependencies: ["CKernels"], swiftSettings: optimized),
        .target(name: "CWFormats", dependencies: ["CWKernels", .product(name: "Logging", package: "swift-log")], swiftSettings: optimized),
        .target(name: "CWTokenizers", dependencies: ["CWFormats"], swiftSettings: optimized),
        .target(name: "CWTransformer", dependencies: ["CWKernels", "CWFormats"], swiftSettings: optimized),
        .target(name: "CWLoRA", dependencies: ["CWTransformer", "CWFormats", "CWKernels", .product(name: "Logging", package: "swift-log")], swiftSettings: optimized),
        .target(name: "CWScheduler", dependencies: ["CWLoRA", "CWTransformer", "CWKernels", "Yams"], swiftSettings: optimized),
        .target(
            name: "ChunkWise",
            dependencies: ["CWScheduler", "CWLoRA", "CWTransformer", "CWTokenizers", "CWFormats", "CWKernels", .product(name: "Logging", package: "swift-log")],
            swiftSettings: optimized
        ),
        .target(name: "CWEval", dependencies: ["ChunkWise", "CWScheduler", "CWLoRA"], swiftSettings: optimized),
        .target(
            name: "CWServer",
            dependencies: [
                "ChunkWise", "CWScheduler", "CWLoRA",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: optimized
        ),
        .executableTarget(
            name: "ChunkWiseCLI",
            dependencies: ["ChunkWise", "CWServer", "CWEval", "CWScheduler", "CWLoRA", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: optimized
        ),
        .target(name: "CWTestSupport", path: "Tests/Support"),
        .testTarget(name: "CWKernelsTests", dependencies: ["CWKernels"]),
        .testTarget(name: "CWFormatsTests", dependencies: ["CWFormats"]),
        .testTarget(name: "CWTokenizersTests", dependencies: ["CWTokenizers", "CWFormats"], exclude: ["Fixtures"]),
        .testTarget(name: "CWTransformerTests", dependencies: ["CWTransformer", "CWFormats", "CWKernels", "CWTestSupport"]),
        .testTarget(name: "CWLoRATests", dependencies: ["CWLoRA", "CWTransformer", "CWFormats", "CWKernels", "CWTestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "CWSchedulerTests", dependencies: ["CWScheduler", "CWLoRA", "CWTransformer", "CWTestSupport", .product(name: "PropertyBased", package: "swift-property-based")]),
        .testTarget(name: "CWEvalTests", dependencies: ["CWEval", "ChunkWise", "CWTestSupport"]),
        .testTarget(name: "CWServerTests", dependencies: [
            "CWServer", "ChunkWise", "CWTestSupport",
            .product(name: "HummingbirdTesting", package: "hummingbird"),
        ]),
        .testTarget(name: "ChunkWiseTests", dependencies: ["ChunkWise", "CWTestSupport"]),
    ]
)
