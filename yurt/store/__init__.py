"""Node-local caches with atomic writes (extracted images, later blobs)."""
