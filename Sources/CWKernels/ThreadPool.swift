import Dispatch
import Foundation

/// A pool of worker threads that split row ranges of a kernel between them.
public final class ThreadPool: @unchecked Sendable {
    public let threads: Int

    public init(threads: Int = ProcessInfo.processInfo.activeProcessorCount) {
        self.threads = max(1, threads)
    }

    /// Runs `body(start, end)` over `0..<count` split into contiguous chunks, one per worker,
    /// chunk boundaries a multiple of `granularity`. Returns when all chunks are done.
    public func parallelFor(_ count: Int, granularity: Int = 1, _ body: (Int, Int) -> Void) {
        if count <= 0 { return }
        let g = max(1, granularity)
        let units = (count + g - 1) / g
        let n = min(threads, units)
        if n <= 1 { body(0, count); return }
        withoutActuallyEscaping(body) { escaping in
            nonisolated(unsafe) let body = escaping
            DispatchQueue.concurrentPerform(iterations: n) { i in
                let s = units * i / n * g
                let e = min(count, units * (i + 1) / n * g)
                if s < e { body(s, e) }
            }
        }
    }
}
