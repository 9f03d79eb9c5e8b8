// swift-tools-version: 6.1
//
// Kernel benchmarks for ChunkWise, kept in their own package so the main build and CI do not
// pull in the benchmark framework. See README.md.
import Foundation
import PackageDescription

// A path dependency's identity is its directory name (e.g. "main" or a worktree's name).
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
let rootIdentity = root.lastPathComponent

let package = Package(
    name: "ChunkWiseBenchmarks",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.0", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "KernelBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                // CWKernels has no product of its own; it comes with the ChunkWise library.
                .product(name: "ChunkWise", package: rootIdentity),
            ],
            path: "Benchmarks/KernelBenchmarks",
            swiftSettings: [.unsafeFlags(["-Ounchecked", "-wmo"])],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
