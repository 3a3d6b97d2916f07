"""An HTTP server of an export folder: aiohttp handlers (:mod:`.app`), dynamic batching into the runtime's streaming
engine (:mod:`.batcher`), Prometheus metrics (:mod:`.metrics`). Like the runtime, it never imports torch."""
