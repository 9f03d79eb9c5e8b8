import Foundation

/// One SQuAD question with its paragraph.
public struct SQuADQuestion: Sendable, Codable, Equatable {
    public var id: String
    public var question: String
    public var context: String
    /// Gold answer texts (empty for unanswerable questions).
    public var answers: [String]
    public var isImpossible: Bool
    /// Index of the article in the file.
    public var article: Int
    public var title: String

    public init(id: String, question: String, context: String, answers: [String], isImpossible: Bool, article: Int, title: String) {
        self.id = id; self.question = question; self.context = context; self.answers = answers
        self.isImpossible = isImpossible; self.article = article; self.title = title
    }
}

/// A SQuAD v1.1 / v2.0 JSON file (`{"version", "data": [{"title", "paragraphs": [{"context", "qas"}]}]}`).
public struct SQuADDataset: Sendable {
    public var questions: [SQuADQuestion]

    public init(questions: [SQuADQuestion]) { self.questions = questions }

    public init(path: String) throws {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch { throw EvalError.invalidInput("cannot read \(path): \(error.localizedDescription)") }
        try self.init(data: data, name: path)
    }

    public init(data: Data, name: String = "SQuAD data") throws {
        guard let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let articles = root["data"] as? [[String: Any]] else {
            throw EvalError.invalidInput("\(name): not a SQuAD JSON file (no \"data\" list)")
        }
        var qs: [SQuADQuestion] = []
        for (ai, art) in articles.enumerated() {
            let title = art["title"] as? String ?? ""
            guard let paras = art["paragraphs"] as? [[String: Any]] else { throw EvalError.invalidInput("\(name): article \(ai) has no paragraphs") }
            for p in paras {
                guard let ctx = p["context"] as? String, let qas = p["qas"] as? [[String: Any]] else {
                    throw EvalError.invalidInput("\(name): a paragraph of article \(ai) lacks context or qas")
                }
                for qa in qas {
                    guard let id = qa["id"] as? String, let q = qa["question"] as? String else {
                        throw EvalError.invalidInput("\(name): a question of article \(ai) lacks id or question")
                    }
                    let answers = (qa["answers"] as? [[String: Any]] ?? []).compactMap { $0["text"] as? String }
                    let impossible = qa["is_impossible"] as? Bool ?? answers.isEmpty
                    qs.append(SQuADQuestion(id: id, question: q, context: ctx, answers: answers, isImpossible: impossible, article: ai, title: title))
                }
            }
        }
        questions = qs
    }

    /// Questions of some articles (0-based indices), optionally only the answerable ones, at most `limit`.
    public func select(articles: [Int]? = nil, answerableOnly: Bool = false, limit: Int? = nil) -> [SQuADQuestion] {
        var out = questions
        if let articles { let set = Set(articles); out = out.filter { set.contains($0.article) } }
        if answerableOnly { out = out.filter { !$0.answers.isEmpty } }
        if let limit { out = Array(out.prefix(max(0, limit))) }
        return out
    }
}

/// The official SQuAD v2.0 metric (`evaluate-v2.0.py`; HF `evaluate`'s `squad_v2`).
public enum SQuADMetric {
    static let punctuation: Set<UInt32> = Set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".unicodeScalars.map { $0.value })

    /// Python's `re` `\w` for str patterns: alphanumeric (str.isalnum) or underscore.
    static func isWord(_ c: UInt32) -> Bool {
        if c == 0x5F { return true }
        guard let u = Unicode.Scalar(c) else { return false }
        switch u.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter,
             .decimalNumber, .letterNumber, .otherNumber:
            return true
        default:
            return u.properties.numericType != nil
        }
    }

    /// lower → remove punctuation → remove articles (`\b(a|an|the)\b` → " ") → collapse whitespace.
    public static func normalize(_ s: String) -> String {
        var cps = PyText.scalars(s.lowercased()).filter { !punctuation.contains($0) }
        // Articles.
        var out: [UInt32] = []
        out.reserveCapacity(cps.count)
        var i = 0
        let n = cps.count
        func boundaryBefore(_ i: Int) -> Bool { i == 0 || !isWord(cps[i - 1]) }
        func boundaryAfter(_ j: Int) -> Bool { j >= n || !isWord(cps[j]) }
        let articles: [[UInt32]] = [[0x61], [0x61, 0x6E], [0x74, 0x68, 0x65]] // a, an, the (regex alternation order)
        while i < n {
            var matched = 0
            if boundaryBefore(i) {
                for a in articles where i + a.count <= n && cps[i..<(i + a.count)].elementsEqual(a) && boundaryAfter(i + a.count) {
                    matched = a.count; break
                }
            }
            if matched > 0 { out.append(0x20); i += matched } else { out.append(cps[i]); i += 1 }
        }
        cps = out
        return PyText.split(cps).map { PyText.string($0) }.joined(separator: " ")
    }

    static func tokens(_ s: String) -> [String] {
        PyText.split(PyText.scalars(normalize(s))).map { PyText.string($0) }
    }

    /// Gold answers as the official script takes them: texts with a non-empty normalized form, or `[""]`.
    public static func goldAnswers(_ answers: [String]) -> [String] {
        answers.filter { !normalize($0).isEmpty }
    }

    public static func exact(_ gold: String, _ pred: String) -> Int {
        normalize(gold).unicodeScalars.elementsEqual(normalize(pred).unicodeScalars) ? 1 : 0
    }

    public static func f1(_ gold: String, _ pred: String) -> Double {
        let g = tokens(gold), p = tokens(pred)
        if g.isEmpty || p.isEmpty { return g.isEmpty && p.isEmpty ? 1 : 0 }
        // Keys compared by code points, as Python does.
        var counts: [[UInt32]: Int] = [:]
        for t in g { counts[PyText.scalars(t), default: 0] += 1 }
        var common = 0
        for t in p {
            let k = PyText.scalars(t)
            if let c = counts[k], c > 0 { common += 1; counts[k] = c - 1 }
        }
        if common == 0 { return 0 }
        let precision = Double(common) / Double(p.count)
        let recall = Double(common) / Double(g.count)
        return (2 * precision * recall) / (precision + recall)
    }

    /// Per-question scores: max over the gold answers.
    public static func score(answers: [String], prediction: String) -> (exact: Int, f1: Double) {
        var golds = goldAnswers(answers)
        if golds.isEmpty { golds = [""] }
        var em = 0, f = 0.0
        for g in golds { em = max(em, exact(g, prediction)); f = max(f, f1(g, prediction)) }
        return (em, f)
    }

    /// Totals as the official script prints them (no-answer threshold not applied: every
    /// no-answer probability is 0).
    public struct Result: Sendable, Codable, Equatable {
        public var exact: Double
        public var f1: Double
        public var total: Int
        public var HasAns_exact: Double?
        public var HasAns_f1: Double?
        public var HasAns_total: Int?
        public var NoAns_exact: Double?
        public var NoAns_f1: Double?
        public var NoAns_total: Int?
        /// Questions of the data file without a prediction (not scored, as the official script).
        public var missing: Int
    }

    public struct PerQuestion: Sendable, Codable, Equatable {
        public var id: String
        public var prediction: String
        public var exact: Int
        public var f1: Double
        public var hasAnswer: Bool
    }

    /// Scores predictions (`{id: text}`) of the questions they cover.
    public static func evaluate(questions: [SQuADQuestion], predictions: [String: String]) -> (result: Result, perQuestion: [PerQuestion]) {
        var per: [PerQuestion] = []
        var missing = 0
        for q in questions {
            guard let p = predictions[q.id] else { missing += 1; continue }
            let s = score(answers: q.answers, prediction: p)
            per.append(PerQuestion(id: q.id, prediction: p, exact: s.exact, f1: s.f1, hasAnswer: !q.answers.isEmpty))
        }
        func mean(_ xs: [Double]) -> Double { xs.isEmpty ? 0 : 100.0 * xs.reduce(0, +) / Double(xs.count) }
        let has = per.filter { $0.hasAnswer }, no = per.filter { !$0.hasAnswer }
        var r = Result(exact: mean(per.map { Double($0.exact) }), f1: mean(per.map { $0.f1 }), total: per.count, missing: missing)
        if !has.isEmpty {
            r.HasAns_exact = mean(has.map { Double($0.exact) }); r.HasAns_f1 = mean(has.map { $0.f1 }); r.HasAns_total = has.count
        }
        if !no.isEmpty {
            r.NoAns_exact = mean(no.map { Double($0.exact) }); r.NoAns_f1 = mean(no.map { $0.f1 }); r.NoAns_total = no.count
        }
        return (r, per)
    }

    /// Reads an official predictions file (`{question_id: text}`).
    public static func readPredictions(_ path: String) throws -> [String: String] {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch { throw EvalError.invalidInput("cannot read \(path): \(error.localizedDescription)") }
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw EvalError.invalidInput("\(path): predictions must be a JSON object {question_id: text}")
        }
        var out: [String: String] = [:]
        for (k, v) in obj {
            guard let s = v as? String else { throw EvalError.invalidInput("\(path): prediction of \(k) is not a string") }
            out[k] = s
        }
        return out
    }
}
