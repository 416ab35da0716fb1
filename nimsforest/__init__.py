"""NimsForest: event-driven business logic on a self-forming NATS JetStream cluster."""

__version__ = "0.1.0"
