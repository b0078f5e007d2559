"""The test suite. Helpers are plain modules beside the tests, imported as `tests.<module>`
(train_support, data_support, sweep_support, kv_models, kv_toy, fixtures.make_runs); shared fixtures
are in conftest.py."""
