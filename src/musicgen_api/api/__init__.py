"""HTTP only: routes, request validation, SSE framing and the mapping of errors to statuses. Never imports torch."""
