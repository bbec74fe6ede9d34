"""API helpers every app shares: the error handler, pagination, scoped serializers, fields."""
