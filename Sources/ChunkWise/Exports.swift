// `import ChunkWise` gives the whole public API: kernels, formats, tokenizers and the model.
@_exported import CWFormats
@_exported import CWKernels
@_exported import CWTokenizers
@_exported import CWTransformer
@_exported import CWLoRA
@_exported import CWScheduler
