"""Pure array-API implementations: one module per loss, each taking a validated call object."""
