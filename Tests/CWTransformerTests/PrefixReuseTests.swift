import CWFormats
import CWKernels
import CWTestSupport
import CWTransformer
import Foundation
import XCTest

/// `KVCache.adoptPrefix`: a cache that starts from another cache's whole blocks gives the logits
/// a fresh prefill of the whole prompt gives, bit for bit (in both precisions, as long as the rest
/// of the prompt is at least 4 tokens: the batched kernels, whose per-token results do not depend
/// on the other tokens of the call), and neither cache's later work changes the other's.
final class PrefixReuseTests: XCTestCase {
    static let pool = ThreadPool(threads: ProcessInfo.processInfo.activeProcessorCount)

    func testAdoptedPrefixGivesTheLogitsOfAFreshPrefill() throws {
        let m = try KVModelTests.model()
        let ids = Array(try KVModelTests.wikiIds().prefix(110))
        let prompt = Array(ids.prefix(70))
        for precision in [Precision.exact, .fast] {
            let opts = ForwardOptions(precision: precision, pool: Self.pool, logits: .last)
            let ref = try m.forward(prompt, cache: m.makeCache(), options: opts)
            // The donor: another request whose prompt shares the first 45 tokens, then decoded a little.
            let donor = m.makeCache()
            let donorPrompt = Array(ids.prefix(45)) + Array(ids[80..<100])
            _ = try m.forward(donorPrompt, cache: donor, options: opts)
            for t in ids[100..<103] { _ = try m.forward([t], cache: donor, options: opts) }
            let donorNext = try m.forward(Array(ids[103..<110]), cache: donor, options: opts)

            let c = m.makeCache()
            XCTAssertEqual(c.adoptPrefix(from: donor, tokens: prompt, limit: prompt.count - 4), 32, "\(precision)")
            XCTAssertEqual(c.count, 32)
            let got = try m.forward(Array(prompt[32...]), cache: c, options: opts)
            XCTAssertEqual(Self.differing(got, ref), 0, "\(precision): adopted prefix + the rest vs one prefill")
            // The shortest rest the server computes: 4 tokens (1–3 take the per-pair kernels in
            // `fast`, whose bits differ from the batched kernel's: measured, every logit).
            let short = Array(ids.prefix(36))
            let shortRef = try m.forward(short, cache: m.makeCache(), options: opts)
            let c4 = m.makeCache()
            XCTAssertEqual(c4.adoptPrefix(from: donor, tokens: short, limit: short.count - 4), 32)
            XCTAssertEqual(Self.differing(try m.forward(Array(short[32...]), cache: c4, options: opts), shortRef), 0,
                           "\(precision): a rest of 4 tokens")
            // Why the server and the engine compute at least that many: printed, not asserted
            // (which kernels a shorter rest takes is the kernels' business).
            for rest in 1..<KVCache.minTokensAfterAdoptedPrefix {
                let p = Array(ids.prefix(32 + rest))
                let whole = try m.forward(p, cache: m.makeCache(), options: opts)
                let c = m.makeCache()
                _ = c.adoptPrefix(from: donor, tokens: p, limit: 32)
                let got = try m.forward(Array(p[32...]), cache: c, options: opts)
                print("prefix reuse, \(precision), a rest of \(rest) token(s): \(zip(got, whole).filter { $0.bitPattern != $1.bitPattern }.count) of \(got.count) logits differ from a whole prefill")
            }
            // The adopter's own decode and truncation leave the donor's blocks as they were: the
            // donor, cut back and run again, gives what it gave before.
            for t in ids[70..<75] { _ = try m.forward([t], cache: c, options: opts) }
            c.truncate(to: 10)
            donor.truncate(to: 68)
            let again = try m.forward(Array(ids[103..<110]), cache: donor, options: opts)
            XCTAssertEqual(Self.differing(again, donorNext), 0, "\(precision): the donor after the adopter's work")
        }
    }

    /// Elements whose bits differ (printing the largest difference when there are any).
    static func differing(_ a: [Float], _ b: [Float]) -> Int {
        guard a.count == b.count else { return max(a.count, b.count) }
        let n = zip(a, b).filter { $0.bitPattern != $1.bitPattern }.count
        if n > 0 { print("differ: \(n) of \(a.count), max |diff| \(zip(a, b).map { abs($0 - $1) }.max() ?? 0)") }
        return n
    }

    func testOnlyWholeSealedMatchingBlocksAreShared() throws {
        let kvDim = 8
        func filled(_ n: Int, tokens: [Int], policy: KVPolicy = .full) throws -> KVCache {
            let c = KVCache(layers: 2, kvDim: kvDim, maxCapacity: 1024, kvHeads: 2, blockSize: 4)
            c.setPolicy(policy, forPositionsFrom: 0)
            let k = (0..<(n * kvDim)).map { Float($0 % 17) / 17 }
            for l in 0..<2 { try c.append(layer: l, keys: k, values: k, rows: n, tokens: tokens) }
            c.advance(to: n)
            return c
        }
        let toks = Array(100..<111)
        let donor = try filled(11, tokens: toks)  // blocks 0–3, 4–7 sealed, 8–10 staging
        func adopt(_ tokens: [Int], limit: Int, from d: KVCache) -> Int {
            KVCache(layers: 2, kvDim: kvDim, maxCapacity: 1024, kvHeads: 2, blockSize: 4).adoptPrefix(from: d, tokens: tokens, limit: limit)
        }
        XCTAssertEqual(adopt(toks, limit: 100, from: donor), 8, "the staging block is not shared")
        XCTAssertEqual(adopt(toks, limit: 7, from: donor), 4, "whole blocks within the limit")
        XCTAssertEqual(adopt(Array(toks.prefix(6)) + [0, 0, 0], limit: 100, from: donor), 4, "blocks up to the first differing token")
        XCTAssertEqual(adopt([1] + toks, limit: 100, from: donor), 0)
        XCTAssertEqual(adopt(toks, limit: 100, from: try filled(11, tokens: toks, policy: .window(sinks: 1, recent: 4))), 0,
                       "blocks whose policy evicts are not shared")
        let other = KVCache(layers: 2, kvDim: kvDim, maxCapacity: 1024, kvHeads: 2, blockSize: 8)
        XCTAssertEqual(other.adoptPrefix(from: donor, tokens: toks, limit: 100), 0, "another block size")
        let busy = try filled(3, tokens: [1, 2, 3])
        XCTAssertEqual(busy.adoptPrefix(from: donor, tokens: toks, limit: 100), 0, "a cache that already holds positions")
        XCTAssertEqual(busy.count, 3)
    }
}
