import CKernels
import Foundation

/// A persistent pool of worker threads that split row ranges of a kernel between them.
///
/// The `threads - 1` workers are created once and live as long as the pool. Between jobs they
/// spin briefly (so the ~200 small matrix-vector products of one decode step do not pay a
/// thread wake-up each) and then sleep on a condition variable. The calling thread runs the first
/// part of every job itself. Calls from inside a job, or from a second thread while the pool is
/// busy, run serially on the calling thread, so nesting never deadlocks.
public final class ThreadPool: @unchecked Sendable {
    public let threads: Int
    /// The C pool, for kernels that take one.
    public let handle: OpaquePointer?

    public init(threads: Int = ProcessInfo.processInfo.activeProcessorCount) {
        let n = max(1, threads)
        let h = cw_pool_create(Int32(clamping: n))
        self.handle = h
        self.threads = h.map { Int(cw_pool_threads($0)) } ?? 1
    }

    deinit { cw_pool_destroy(handle) }

    /// Lets the waiting workers sleep now instead of spinning for the next job (which wakes them):
    /// for a caller that will leave the pool idle for a while, so that their spinning does not take
    /// cores from the threads that run in the meantime (a server between its steps).
    public func rest() { cw_pool_rest(handle) }

    /// Runs `body(start, end)` over `0..<count` split into contiguous chunks, one per worker,
    /// chunk boundaries a multiple of `granularity`. Returns when all chunks are done.
    public func parallelFor(_ count: Int, granularity: Int = 1, _ body: (Int, Int) -> Void) {
        if count <= 0 { return }
        let g = max(1, granularity)
        if threads <= 1 || count <= g { body(0, count); return }
        withoutActuallyEscaping(body) { escaping in
            var box = escaping
            withUnsafeMutablePointer(to: &box) { p in
                cw_pool_parallel_for(handle, Int64(count), Int64(g), { ctx, s, e in
                    ctx!.assumingMemoryBound(to: ((Int, Int) -> Void).self).pointee(Int(s), Int(e))
                }, UnsafeMutableRawPointer(p))
            }
        }
    }
}
