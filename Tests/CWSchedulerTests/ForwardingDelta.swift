import CWKernels
import CWTransformer
import Foundation

/// A test double: forwards every `ProjectionDelta` requirement to `inner`; subclasses override the
/// ones a test watches or changes (which path the model took, what it was told).
class ForwardingDelta: ProjectionDelta, @unchecked Sendable {
    let inner: ProjectionDelta
    init(_ inner: ProjectionDelta) { self.inner = inner }
    var isPositionIndependent: Bool { inner.isPositionIndependent }
    var isReentrant: Bool { inner.isReentrant }
    var isAdditive: Bool { inner.isAdditive }
    func memory(layer: Int, projection: Projection) -> [UnsafeRawBufferPointer] { inner.memory(layer: layer, projection: projection) }
    func apply(layer: Int, projection: Projection, x: UnsafePointer<Float>, tokens: Int, positions: Range<Int>,
               y: UnsafeMutablePointer<Float>, pool: ThreadPool) {
        inner.apply(layer: layer, projection: projection, x: x, tokens: tokens, positions: positions, y: y, pool: pool)
    }
    func split(layer: Int, projection: Projection, x: UnsafePointer<Float>, tokens: Int, positions: Range<Int>,
               pool: ThreadPool) -> SplitDelta? {
        inner.split(layer: layer, projection: projection, x: x, tokens: tokens, positions: positions, pool: pool)
    }
    func acts(on positions: Range<Int>) -> Bool { inner.acts(on: positions) }
    func lowRankTerms(layer: Int, projection: Projection, x: UnsafePointer<Float>, position: Int, target: Int,
                      scratch: UnsafeMutablePointer<Float>, capacity: Int, terms: inout [LowRankTerm], pool: ThreadPool) -> Int? {
        inner.lowRankTerms(layer: layer, projection: projection, x: x, position: position, target: target,
                           scratch: scratch, capacity: capacity, terms: &terms, pool: pool)
    }
    func stepMemory(layer: Int, projection: Projection, position: Int) -> [UnsafeRawBufferPointer] {
        inner.stepMemory(layer: layer, projection: projection, position: position)
    }
}
