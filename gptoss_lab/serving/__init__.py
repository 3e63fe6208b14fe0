"""Model servers run here on loopback (llama.cpp, vLLM): built or installed from the package registries into
the cache, for the remote backend's tests, ``gptoss-lab serve-test-model`` and ``make bench``."""
