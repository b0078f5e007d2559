"""Data contract, synthetic world, converters, validator and the Lightning data module."""
