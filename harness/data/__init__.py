"""Data contract, synthetic world, converters, validator and the Lightning data module, in layers
(schema, statistics, validation, generation, resolution, loading, CLI): docs/contracts.md,
"harness/data in layers"; tests/test_data_layers.py keeps the imports going down them."""
