"""Engine tests: generation, batching, sampling, tools, tokenizing, model conversion and the CPU/CUDA backends."""
