// CWEval — evaluation (placeholder)
