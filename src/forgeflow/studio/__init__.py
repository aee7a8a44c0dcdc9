"""Studio: the web UI served by `forgeflow serve` at `/`, a static single page over the REST API."""
