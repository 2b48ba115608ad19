package relay

// Observer is told what the relay does, for metrics and health checks.
// Implementations must be cheap and must not block: they are called on
// the pipeline's hot path.
type Observer interface{}
