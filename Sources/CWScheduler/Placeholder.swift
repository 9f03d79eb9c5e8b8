// CWScheduler — the ChunkWise scheduler (placeholder)
